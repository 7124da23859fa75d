"""Remat switches (config.model.vision.remat, model.semantic.llm.remat, model.bev.remat,
model.planner.remat) and the BEV attention's query chunks (model.bev.attn_q_chunk): the
same param paths (checkpoints load either way), the same outputs and gradients, the blocks
really rematerialised, bfloat16 compute reaching the blocks."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from irlvla_jax.models import layers
from irlvla_jax.models import planner as pl
from irlvla_jax.models import vision as vision_lib
from irlvla_jax.models.bev import BEVEncoder
from irlvla_jax.models.semantic import LlamaDecoder

POLICY = "nothing_saveable"
FRONT = np.array([[0, 0, 1, 1.0], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]], np.float32)
K = np.array([[50.0, 0, 64], [0, 50, 36], [0, 0, 1]], np.float32)


def _with(cfg, **kw):
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.update(kw)
    return c


def llm_case():
    cfg = tiny.get_config().model.semantic.llm
    x = jax.random.normal(jax.random.key(0), (2, 7, cfg.hidden_size))
    valid = jnp.arange(7)[None] < jnp.array([[7], [5]])
    return cfg, (lambda c: LlamaDecoder(c)), (x, valid), {}


def bev_case():
    cfg = _with(tiny.get_config().model.bev, num_layers=2, query_hw=(4, 4))
    b, c = 2, 2
    feats = jax.random.normal(jax.random.key(0), (b, c, 3, 4, 16))
    intr = jnp.broadcast_to(jnp.asarray(K), (b, c, 3, 3))
    ext = jnp.broadcast_to(jnp.asarray(FRONT), (b, c, 4, 4))
    lidar = jax.random.uniform(jax.random.key(1), (b, 8, 8, 2))
    # image_hw is static: bound by the closure below, not passed as an array
    return cfg, (lambda c: _Bev(c)), (feats, intr, ext, lidar), {}


class _Bev(BEVEncoder):
    def __call__(self, feats, intr, ext, lidar):       # image_hw fixed, train=True
        return super().__call__(feats, intr, ext, (72, 128), lidar, train=True)


def planner_case():
    cfg = _with(tiny.get_config().model.planner, num_anchors=6, d_model=32, num_heads=2,
                num_blocks=2, fourier_freqs=4)
    k = jax.random.split(jax.random.key(0), 5)
    b, d = 3, 16
    tokens = pl.SceneTokens(
        meta=jax.random.normal(k[0], (b, 2, d)), meta_logits=None,
        bev=jax.random.normal(k[1], (b, 9, d)), bev_map=None,
        map=jax.random.normal(k[2], (b, 5, d)),
        map_valid=jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool),
        obj=jax.random.normal(k[3], (b, 4, d)), ego_status=jnp.ones((b, 20)))
    x_t = jax.random.normal(k[4], (b, 6, 8, 3))
    return cfg, (lambda c: pl.DiffusionPlanner(c)), (x_t, jnp.array([3, 10, 40]), tokens), {}


def vision_case():
    cfg = _with(tiny.get_config().model.vision, stage_sizes=(2, 1), widths=(8, 16),
                stem_width=8, out_dim=16)
    images = jax.random.uniform(jax.random.key(0), (2, 32, 48, 3))
    return cfg, (lambda c: vision_lib.ResNet(c)), (images,), {}


CASES = {"llm": llm_case, "bev": bev_case, "planner": planner_case, "vision": vision_case}


def _perturbed(params, seed=2):
    """Non-trivial params (the planner's zero-initialised FiLM and heads included)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])


def _scalar(out):
    return sum(jnp.sum(jnp.sin(o.astype(jnp.float32))) for o in jax.tree.leaves(out))


@pytest.mark.parametrize("block", sorted(CASES))
def test_remat_keeps_params_outputs_and_gradients(block):
    cfg, make, args, _ = CASES[block]()
    plain, remat = make(cfg), make(_with(cfg, remat=POLICY))

    init = lambda m: jax.jit(m.init)(jax.random.key(1), *args)   # noqa: E731
    v_plain, v_remat = init(plain), init(remat)
    # the same paths and the same initial values: a checkpoint saved either way loads the other
    assert jax.tree.structure(v_plain) == jax.tree.structure(v_remat)
    jax.tree.map(np.testing.assert_array_equal, v_plain, v_remat)

    variables = dict(v_plain, params=_perturbed(v_plain["params"]))

    def loss(m):
        return lambda p, *a: _scalar(m.apply(dict(variables, params=p), *a))

    grad_plain = jax.jit(jax.value_and_grad(loss(plain), argnums=(0, 1)))
    grad_remat = jax.jit(jax.value_and_grad(loss(remat), argnums=(0, 1)))
    (l0, g0), (l1, g1) = grad_plain(variables["params"], *args), grad_remat(
        variables["params"], *args)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), g0, g1)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g0))

    # the switch really rematerialises: one remat per layer in the gradient's program, none off
    def n_remat(m):
        jaxpr = jax.make_jaxpr(jax.grad(loss(m)))(variables["params"], *args)
        return len(re.findall(r"\bremat\d*\b|\bcheckpoint\b", str(jaxpr)))
    n_layers = {"llm": cfg.get("num_layers"), "bev": cfg.get("num_layers"),
                "planner": cfg.get("num_blocks"), "vision": sum(cfg.get("stage_sizes", ()))}[block]
    assert n_remat(plain) == 0
    assert n_remat(remat) >= n_layers


def test_unknown_remat_policy_is_a_clear_error():
    assert layers.remat_policy("") is None
    with pytest.raises(ValueError, match="remat = 'everything'"):
        layers.remat_policy("everything")


def _dots(jaxpr, inside_remat=False):
    """(inside a remat block?, operand dtypes) of every matmul and convolution in a jaxpr."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            yield inside_remat, tuple(str(v.aval.dtype) for v in eqn.invars)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from _dots(sub, inside_remat or name.startswith(("remat",
                                                                           "checkpoint")))


@pytest.mark.parametrize("block", sorted(CASES))
def test_bfloat16_compute_reaches_the_blocks(block):
    """model.dtype = bfloat16 (configs/navsim.py) is the blocks' compute dtype: every matmul
    inside the rematerialised blocks' forward pass takes bfloat16 operands; params stay
    float32."""
    cfg, make, args, _ = CASES[block]()
    m = make(_with(cfg, remat=POLICY)).clone(dtype=jnp.bfloat16)
    variables = jax.eval_shape(m.init, jax.random.key(1), *args)
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    # the forward program (the backward's matmuls are JAX's transposes of these: with its
    # attention's float32 softmax some take a float32 cotangent at BF16_BF16_F32 precision)
    jaxpr = jax.make_jaxpr(lambda v, *a: m.apply(v, *a))(variables, *args)
    in_blocks = [dtypes for inside, dtypes in _dots(jaxpr) if inside]
    assert len(in_blocks) >= 4
    assert all(set(d) == {"bfloat16"} for d in in_blocks), in_blocks


REMAT_FIELDS = ("vision", "semantic.llm", "bev", "planner")


def _remat_config(policy):
    config = tiny.get_config()
    for path in REMAT_FIELDS:
        node = config.model
        for key in path.split("."):
            node = node[key]
        node.remat = policy
    return config


def test_il_state_has_the_same_tree_with_every_remat_switch_on():
    """The whole IL state (params, optimizer moments, anchors) keeps its paths and shapes, so
    an orbax checkpoint saved without remat restores into a state with it and back."""
    from irlvla_jax.models import policy as policy_lib
    from irlvla_jax.train import il

    def abstract(config):
        model = policy_lib.VLAPolicy(config.model)
        state = jax.eval_shape(lambda r: il.create_state(model, config, r), jax.random.key(0))
        return jax.tree_util.tree_flatten_with_path(state)[0]
    off, on = abstract(_remat_config("")), abstract(_remat_config(POLICY))
    assert [(jax.tree_util.keystr(p), x.shape, x.dtype) for p, x in off] == \
        [(jax.tree_util.keystr(p), x.shape, x.dtype) for p, x in on]
    assert any("layers_1" in jax.tree_util.keystr(p) for p, _ in on)


def test_a_resume_may_switch_remat_but_not_the_model(tmp_path):
    from irlvla_jax.train import loop
    stage_dir = tmp_path / "il"
    stage_dir.mkdir()
    loop.save_config(str(stage_dir), _remat_config(""))
    loop.check_config(str(stage_dir), _remat_config(POLICY), "the IL checkpoint")
    changed = _remat_config(POLICY)
    changed.model.semantic.llm.num_layers = 3
    with pytest.raises(SystemExit, match="num_layers"):
        loop.check_config(str(stage_dir), changed, "the IL checkpoint")


@pytest.mark.parametrize("mask_kind", ["none", "keys", "per_query"])
def test_query_chunked_attention_equals_the_whole(mask_kind):
    """layers.attention with q_chunk (the BEV encoder's attn_q_chunk): the same output and
    gradients as all queries at once; no [B, H, Nq, Nk] buffer in its program."""
    k = jax.random.split(jax.random.key(0), 4)
    b, nq, nk, h, dh = 2, 12, 5, 4, 8
    q = jax.random.normal(k[0], (b, nq, h, dh))
    kk = jax.random.normal(k[1], (b, nk, 2, dh))           # grouped-query: 2 kv heads
    v = jax.random.normal(k[2], (b, nk, 2, dh))
    mask = {"none": None,
            "keys": layers.key_padding_mask(jnp.arange(nk)[None] < jnp.array([[5], [2]])),
            "per_query": jax.random.bernoulli(k[3], 0.7, (b, 1, nq, nk))}[mask_kind]

    def run(chunk):
        f = lambda q, kk, v: layers.attention(q, kk, v, mask, q_chunk=chunk)  # noqa: E731
        return jax.jit(jax.value_and_grad(lambda *a: _scalar(f(*a)), argnums=(0, 1, 2)))(
            q, kk, v), f
    (l0, g0), _ = run(0)
    (l1, g1), chunked = run(3)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6), g0, g1)
    hlo = jax.jit(jax.grad(lambda *a: _scalar(chunked(*a)))).lower(q, kk, v).as_text()
    assert f"{b},{h},{nq},{nk}]" not in hlo.replace(" ", "")
    with pytest.raises(ValueError, match="q_chunk=5"):
        layers.attention(q, kk, v, q_chunk=5)


def test_bev_encoder_with_query_chunks_equals_without():
    cfg, make, args, _ = bev_case()
    plain, chunked = make(cfg), make(_with(cfg, attn_q_chunk=4, remat=POLICY))
    variables = jax.jit(plain.init)(jax.random.key(1), *args)
    variables = dict(variables, params=_perturbed(variables["params"]))
    loss = lambda m: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda p: _scalar(m.apply(dict(variables, params=p), *args))))
    (l0, g0), (l1, g1) = loss(plain)(variables["params"]), loss(chunked)(variables["params"])
    # the key/value gradients are summed over the chunks: another order of float additions
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5), g0, g1)
