"""Exact pre-selection: test only the few candidates that can matter, redo overflows exactly.

The scorer's polygon and box tests are cheap one by one but many: K trajectories x 41 steps x
every map polygon / agent. Almost all pairs are far apart, and a cheap bounding-box test rules
them out. So per row (an ego point, a step) the candidates whose box can touch the ego are
packed into a fixed number of slots (:func:`first_true`, or :func:`near_boxes` for boxes), the
expensive test runs on the slots only, and a row with more candidates than slots is recomputed
against everything (:func:`complete`): the results are those of testing everything. The
capacities (``ego_area.AREA_CAPACITY``, ``metrics.AGENT_CAPACITY``, PDM-Closed's corridor
chunks) change the speed only.

XLA:CPU fuses cheap elementwise chains (and recomputes them) into every consumer, also
broadcasting ones, and float min/max reductions are slow: per-scene tables that many tests read
are materialised once (:func:`materialize`), and argmins are int32 reductions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def first_true(mask, capacity):
    """The first ``capacity`` True columns of each row, in column order.

    mask [..., N] bool -> (index [..., C] int32 (0 in unused slots), slot_valid [..., C] bool,
    overflow [...] bool: the row has more than C True columns, the last ones were left out).

    The row is packed into 32-bit words and the slots are filled by repeatedly taking the
    lowest set bit (count-leading-zeros of ``w & -w``) and clearing it: C x words elementwise
    steps, no sort, scatter or cumulative sum (those cost more than the tests they save on CPU).
    The C steps are a ``scan``, so each step's words are materialised once (a Python loop lets
    XLA fuse the whole chain into every slot's output: quadratic in C).
    """
    *lead, n = mask.shape
    words_n = -(-n // 32)
    mask = jnp.pad(mask, [(0, 0)] * len(lead) + [(0, 32 * words_n - n)])
    bits = mask.reshape(tuple(lead) + (words_n, 32)).astype(jnp.uint32) << jnp.arange(
        32, dtype=jnp.uint32)
    packed = jnp.sum(bits, -1, dtype=jnp.uint32)          # distinct bits: the sum is the OR
    words = [packed[..., w] for w in range(words_n)]

    def take_lowest(words, _):
        which = jnp.full(words[0].shape, words_n, jnp.int32)
        word = jnp.zeros(words[0].shape, jnp.uint32)
        for w in reversed(range(words_n)):              # the first non-empty word
            nonzero = words[w] != 0
            which = jnp.where(nonzero, w, which)
            word = jnp.where(nonzero, words[w], word)
        bit = 31 - jax.lax.clz(word & (jnp.uint32(0) - word)).astype(jnp.int32)
        rest = word & (word - jnp.uint32(1))
        words = tuple(jnp.where(which == w, rest, words[w]) for w in range(words_n))
        return words, (jnp.where(which < words_n, 32 * which + bit, 0), which < words_n)

    # (Everything leaves through the scan's outputs: values computed elementwise from the
    # packed words would be fused, and recomputed, into every consumer.)
    rest, (index, slot_valid) = jax.lax.scan(take_lowest, tuple(words), None, length=capacity)
    overflow = functools.reduce(jnp.logical_or, [w != 0 for w in rest])
    return jnp.moveaxis(index, 0, -1), jnp.moveaxis(slot_valid, 0, -1), overflow


def materialize(x, neutral=None):
    """x itself, computed once: a min/max with ``neutral`` over a new size-2 axis.

    XLA:CPU fuses chains of cheap elementwise ops into every consumer, also into consumers that
    read each element many times (a broadcast over candidates, steps or agents), recomputing the
    chain each time; it does not fuse a reduction into its consumers. neutral: a value that
    never wins the min (int/float; default the dtype's max / +inf) or max (bool: False).
    """
    if neutral is None:
        neutral = (False if x.dtype == jnp.bool_ else jnp.inf
                   if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).max)
    pair = jnp.stack([x, jnp.full_like(x, neutral)])
    return pair.max(0) if x.dtype == jnp.bool_ else pair.min(0)


def complete(pending, values, compute, chunk):
    """Exact fallback: ``values[i] = compute(i)`` for every ``pending`` i.

    pending [N] bool; values: pytree of [N, ...]; compute(index [M] int32) -> pytree of
    [M, ...]. A ``while_loop`` over the pending items, ``chunk`` (= M) at a time: when nothing
    is pending it costs one test and no work. Under ``vmap`` (scenes) the loop runs while any
    scene has pending items and keeps the others' values.
    """
    n = pending.shape[0]

    def body(carry):
        todo, vals = carry
        sel = jnp.nonzero(todo, size=chunk, fill_value=n)[0]      # n: an empty slot
        new = compute(jnp.minimum(sel, n - 1))
        vals = jax.tree.map(lambda v, x: v.at[sel].set(x, mode="drop"), vals, new)
        return todo.at[sel].set(False, mode="drop"), vals

    return jax.lax.while_loop(lambda c: c[0].any(), body, (pending, values))[1]


def short_rings(polys, capacity):
    """Rings cut to their first ``capacity`` vertices, where that loses nothing.

    polys [...,V,2] padded rings (padded vertices repeat vertex 0, the Scene's convention) ->
    (short [...,min(V, capacity),2], long [...] bool: a vertex past ``capacity`` differs from
    vertex 0). A ring that is not long is the same ring cut short: the vertices dropped are
    copies of vertex 0, so the cut ring has the same edges but for zero-length ones at vertex 0
    (its closing edge, last vertex -> vertex 0, is the edge into the first dropped copy). Every
    predicate and distance on the short ring is that of the full one; a long ring must be
    tested in full (the caller's fallback).
    """
    if capacity >= polys.shape[-2]:
        return polys, jnp.zeros(polys.shape[:-2], bool)
    rest = polys[..., capacity:, :]
    return polys[..., :capacity, :], (rest != polys[..., :1, :]).any((-1, -2))


def box_lo_hi(corners):
    """corners [...,4,2] -> (lo [...,2], hi [...,2]) axis-aligned bounds."""
    return corners.min(-2), corners.max(-2)


def boxes_overlap(amin, amax, bmin, bmax):
    """Closed axis-aligned boxes [...,2] overlap (touching counts) -> bool [...]."""
    return ((amin[..., 0] <= bmax[..., 0]) & (amax[..., 0] >= bmin[..., 0]) &
            (amin[..., 1] <= bmax[..., 1]) & (amax[..., 1] >= bmin[..., 1]))


def near_boxes(present, lo, hi, ego_lo, ego_hi, capacity):
    """Per step, the boxes whose bounds overlap the ego's, packed into ``capacity`` slots.

    present [T,A] bool; lo, hi [T,A,2]: the boxes' bounds; ego_lo, ego_hi [T,2]: the ego's.
    capacity: static; None (or >= A) keeps every box, slot c = box c.
    Returns (index [T,C] int32, slot_valid [T,C] bool, overflow [T] bool: more than C boxes
    overlapped, aligned: static bool, True when slot c is box c). Only a box whose bounds
    overlap the ego's can intersect it.
    """
    num_t, num_a = present.shape
    if capacity is None or capacity >= num_a:
        return (jnp.broadcast_to(jnp.arange(num_a), (num_t, num_a)), present,
                jnp.zeros((num_t,), bool), True)
    near = present & boxes_overlap(lo, hi, materialize(ego_lo)[:, None],
                                   materialize(ego_hi)[:, None])
    return (*first_true(near, capacity), False)
