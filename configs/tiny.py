"""The embedded default: a synthetic NAVSIM-format world and a tiny policy, on 2 CPU cores.

    python launch.py                       # data -> il -> irl -> rl -> eval, this config
    python launch.py il --config configs/tiny.py --config.il.num_steps=50

One config = one reproducible run. Each section belongs to one part of the code base:
data -> irlvla_jax/data, sim -> irlvla_jax/sim, model -> irlvla_jax/models,
il / irl / ppo -> irlvla_jax/train, eval -> irlvla_jax/evaluate.py.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "tiny"
    c.seed = 0
    c.workdir = "runs/tiny"
    c.compilation_cache = True   # XLA persistent compilation cache under <workdir>/.xla_cache
    # Where earlier stages' checkpoints are looked for when <workdir>/<stage> has none ("": only
    # the workdir): an ablation of a later stage reuses the default run's IL and RWM.
    c.previous_stages_dir = ""

    # --- data (irlvla_jax/data) -------------------------------------------------------------
    c.data = d = ml_collections.ConfigDict()
    d.dir = ""                 # "" = the repo's data/ folder; NAVSIM-format root + TFDS data go here
    d.source = "synthetic"     # "synthetic" (generated under data.dir), "navsim" (real root) or
                               # "random" (random-content scenes, no reader: pipeline tests)
    d.navsim_root = ""         # $OPENSCENE_DATA_ROOT when source == "navsim"
    d.maps_root = ""           # $NUPLAN_MAPS_ROOT when source == "navsim"
    d.train_split = "synthetic_train"
    d.eval_split = "synthetic_val"
    d.batch_size = 8           # global batch, sharded on the 'data' mesh axis
    d.shuffle = True
    d.num_workers = 0          # grain worker processes (0 = in-process)
    d.prefetch = 2
    d.skip_bad = False         # skip (and count in a report) bad inputs instead of failing
    d.random_scenes = 16       # scenes per split when source == "random" (pipeline smoke tests)
    # Cameras in the TFDS dataset: JPEG of this quality at sizes.image_hw (mean abs error < 3
    # levels at 90), decoded in the loader's grain workers; 0 = raw uint8 (exact; ~7x the
    # bytes with photographs as cameras at NAVSIM size: benchmarks/bench_data.py)
    d.camera_jpeg_quality = 90
    d.sizes = ml_collections.ConfigDict(dict(
        num_future=10,
        cameras=("CAM_F0", "CAM_L0", "CAM_R0", "CAM_B0"),
        image_hw=(72, 128),
        lidar_bev_hw=(64, 64),
        bev_hw=(64, 64),
        bev_range_m=32.0,
        max_agents=32,
        # The scorer's map is exact: every polygon and vertex, or the reader refuses the scene
        # (map_too_large). The default world needs up to 84 polygons of up to 106 vertices.
        max_polygons=96,
        max_polygon_vertices=112,
        max_centerline=200,
        max_red_lights=8,
        max_lanes=32,
        lane_points=10,
    ))
    # the synthetic world (irlvla_jax/data/synthetic)
    d.synthetic = ml_collections.ConfigDict(dict(
        seed=0,
        num_logs=dict(synthetic_train=48, synthetic_val=8),
        frames_per_log=40,
        image_wh=(480, 270),       # written JPEG size (NAVSIM: 1920x1080); intrinsics match
        lidar_points=4000,
    ))

    # --- eval (irlvla_jax/evaluate.py) --------------------------------------------------------
    c.eval = ml_collections.ConfigDict(dict(
        num_scenes=0,              # 0 = the whole eval split
        # `python launch.py submit`: whose plans go into <workdir>/eval/submission.pkl
        # ("rl_policy", "il_policy", "constant_velocity"), and the leaderboard's metadata
        submission_policy="rl_policy",
        team_name="", authors="", email="", institution="", country="",
    ))

    # --- mesh (irlvla_jax/parallel.py) ----------------------------------------------------------
    # The batch is split over data x fsdp devices; with fsdp > 1 every state leaf (params,
    # optimizer moments, frozen earlier-stage variables) of at least fsdp_min_size elements is
    # split over 'fsdp' on its largest divisible dimension; fsdp_overrides maps a regular
    # expression on a leaf's path to the dimension to split (-1: replicate).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2 ** 16,
                                            fsdp_overrides={}))   # data -1: the rest
    # --- model encoders: vision, 3D reasoning, semantic reasoning (irlvla_jax/models) -------
    c.model = m = ml_collections.ConfigDict()
    m.dtype = "float32"        # compute dtype ("bfloat16" on accelerators); params stay float32
    m.vision = ml_collections.ConfigDict(dict(
        kind="resnet",             # "resnet" (torchvision layout) or "vit"
        stage_sizes=(1, 1, 1),     # blocks per stage: output stride 16
        widths=(32, 48, 64),
        stem_width=32,
        norm="group",              # "group" (from scratch) or "frozen_bn" (pretrained, folded BN)
        out_dim=64,
        patch=8, width=64, depth=2, heads=4, mlp_dim=128,    # used when kind == "vit"
        remat="",                  # as model.bev.remat, per ResNet basic block / ViT block
        # .safetensors/.npz state dict loaded at IL init ("" = random init): torchvision ResNet
        # names (needs norm="frozen_bn": BatchNorm statistics fold into the affines) or timm ViT
        # names (kind="vit"); nothing is downloaded
        pretrained="",
    ))
    m.bev = ml_collections.ConfigDict(dict(
        query_hw=(16, 16),         # BEV query grid = output BEV feature map
        range_m=d.sizes.bev_range_m,   # the grid covers [-r, r] x [-r, r] metres
        dim=64,
        num_layers=1,
        num_heads=4,
        mlp_dim=128,
        depths=(4.0, 8.0, 16.0, 32.0, 48.0),   # points along each camera ray for its position code
        use_lidar=True,
        remat="",                  # "" or a layers.REMAT_POLICIES name: each layer recomputed
                                   # in the backward pass (memory for compute; same params)
        attn_q_chunk=0,            # > 0: the queries attend this many at a time (layers.attention)
    ))
    m.detection = ml_collections.ConfigDict(dict(
        num_queries=16,            # object tokens; the nearest num_queries agents are the targets
        range_m=d.sizes.bev_range_m,   # box centres are bounded to the BEV square
        num_layers=1,
        num_heads=4,
        mlp_dim=128,
        cost_class=1.0, cost_box=1.0,                         # Hungarian matching cost weights
        weight_class=1.0, weight_box=1.0, no_object_weight=0.1,   # loss weights
    ))
    m.map = ml_collections.ConfigDict(dict(
        num_tokens=16,             # map tokens for the planner
        range_m=d.sizes.bev_range_m,
        num_layers=1,
        num_heads=4,
        mlp_dim=128,
        seg_hw=d.sizes.bev_hw,     # BEV semantic logits at the label raster's size
    ))
    m.semantic = ml_collections.ConfigDict(dict(
        adaptor_tokens=8,          # driving vision adaptor: visual tokens -> this many latents
        adaptor_heads=4,
        num_meta_tokens=4,         # meta tokens handed to the planner
        out_dim=64,                # width of the meta tokens
        prompt_len=96,             # byte tokens of instruction + command (padded)
        llm=ml_collections.ConfigDict(dict(
            vocab_size=264,        # byte tokenizer (259) padded to a multiple of 8
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
            intermediate_size=256,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            qkv_bias=False,
            tie_word_embeddings=True,
            remat="",              # as model.bev.remat, per decoder layer
            # HF LLaMA/Qwen2 directory loaded at IL init ("" = random init, byte tokenizer):
            # config.json (must equal the fields above), *.safetensors shards, tokenizer.json
            # (tokenises the prompt instead of the byte tokenizer)
            pretrained="",
        )),
    ))

    # --- model.planner + policy switches (models/planner.py, models/policy.py) + il (train/il.py)
    c.model.use_semantic = True     # False: skip the semantic LM (speed ablation); no meta tokens
    # Ground-truth inputs the policy reads besides AgentInput (cameras, LiDAR, ego status history,
    # driving command): () = none, the honest default. ("lanes", "agents") = HD-map lane
    # baselines / annotated boxes at t = 0: a privileged ablation (configs/ablations/
    # privileged_policy.py), recorded in eval.json and refused-with-a-shout by the submission.
    c.model.privileged = ()
    c.model.planner = ml_collections.ConfigDict(dict(
        num_anchors=20, d_model=64, num_heads=4, num_blocks=2, mlp_ratio=2, fourier_freqs=6,
        bev_pool=2,                 # average-pool BEV tokens by this factor before cross-attn
        traj_center=(24.0, 0.0, 0.0), traj_scale=(28.0, 20.0, 1.5),   # normalised = (x - c) / s
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,     # 'scaled_linear' schedule
        train_t_max=50,             # train t ~ U[0, 50): truncated diffusion around the anchors
        sample_t_start=20, sample_steps=2,   # DDIM timesteps (10, 0) as DiffusionDrive
        eta=0.0, sigma_min_sample=0.04, sigma_min_logprob=0.1, logprob_clamp=(-5.0, 2.0),
        x0_clip=3.0,                # clip predicted x0 in normalised space (0: off)
        x0_base="anchor",           # x0 = base + predicted offset; base: "anchor" | "noisy" (x_t)
        remat="",                   # as model.bev.remat, per planner block
    ))
    c.il = ml_collections.ConfigDict(dict(
        num_steps=1000, lr=1e-3, warmup_steps=20, weight_decay=1e-4, clip_norm=1.0,
        end_lr_factor=0.05,
        # trajectory classification / regression, detection (its class/box balance is
        # model.detection's), BEV semantic map, meta actions (when the semantic LM is on)
        loss_weights=dict(traj_cls=10.0, traj_reg=8.0, det=1.0, bev=1.0, meta=1.0),
        focal_alpha=0.25, focal_gamma=2.0,
        log_every=10, eval_every=100, ckpt_every=100, keep_ckpts=2,
        eval_batches=4,             # held-out batches per periodic evaluation (-1: whole split)
        eval_epdms=True,            # the final evaluation also scores the plans (EPDMS)
        final_eval_batches=-1,
        # param paths IL leaves at their initial (pretrained) values, e.g. ("vision",) for the
        # backbone, ("semantic/llm",) for the LM: no updates, no optimizer moments
        freeze=(),
        # the k-means anchors come from at most this many training scenes, a sample seeded by
        # config.seed (all of them, in stored order, when the split is smaller: 1,296 here)
        anchor_scenes=20000,
    ))
    # --- rwm + irl: stage 2, the reward world model (irlvla_jax/models/reward_model.py,
    #     irlvla_jax/train/irl.py, irlvla_jax/train/candidates.py) --------------------------
    c.rwm = ml_collections.ConfigDict(dict(
        # "policy": the scene as the frozen IL policy's sensor tokens (cameras/LiDAR -> BEV,
        # object, map-head and meta tokens; re-observed in the closed loop), the paper's RWM.
        # "privileged": its own encoder over ground truth (logged agent futures, map polygons,
        # route, red lights): an ablation and upper bound (configs/ablations/privileged_rwm.py)
        scene_encoder="policy",
        d_model=64, num_heads=4, mlp_dim=128,
        scene_layers=1,            # self-attention blocks over the scene tokens
        num_blocks=2,              # [traj self-attn -> cross-attn scene -> FFN] blocks
        # hand-written per-waypoint tests against ground truth (box overlap with the logged
        # agents, red connectors, off-road, lane distance): privileged, off by default
        interaction=False,
        # sensor features along each candidate: the policy's BEV feature map (tokens.bev_map)
        # read at every waypoint's footprint corners, centre and 1 s-lookahead point (needs
        # scene_encoder "policy"; without it the RWM sees the plan only as waypoints, and full
        # DPPO against it gains nothing: README "Stage 3")
        bev_sampling=True,
        bev_sample_dim=32,         # width of the sampler's conv over the BEV map
        bev_range_m=m.bev.get_ref("range_m"),   # the BEV map's [-r, r]^2 (its layout)
        # a head on the waypoint tokens predicting the per-waypoint scene geometry (trained by
        # irl.geometry_weight against ground truth; an output, never an input)
        aux_geometry=True,
        dtype="float32",
    ))
    c.irl = ml_collections.ConfigDict(dict(
        num_steps=600, lr=1e-3, warmup_steps=20, weight_decay=1e-4, clip_norm=1.0,
        end_lr_factor=0.05,
        num_vocab=8, num_policy=4, num_perturb=8,   # K = 1 + 8 + 4 + 8 = 21 candidates / scene
        perturb=dict(lateral_m=3.0, speed_range=(0.5, 1.5), heading_rad=0.3, noise_m=0.6),
        # DiffVLA's weights (spec/IRL_VLA.md) + EC 0.1; TLC 0.2 (0.1 there): its failures are rare
        loss_weights=dict(nc=0.1, ddc=0.1, tlc=0.2, ep=0.1, dac=0.4, ttc=0.2, lk=0.2, hc=0.2,
                          ec=0.1),
        balance=True, balance_max_weight=10.0,       # class balancing of the rare failures
        balance_power=1.0,         # class weight (1 / frequency) ** power (0.5: inverse sqrt)
        calibrate=True,            # logit adjustment: balanced training, calibrated outputs
        irl_weight=1.0,            # inverse-RL term (0 = off): hinge + max-ent on the expert
        margin=0.05, maxent_weight=0.1, temperature=0.1,
        pair_sources=("vocab", "policy", "perturb"),
        log_every=10, ckpt_every=100, keep_ckpts=2,
        fuse_step=False,           # True: candidates + scorer labels + update in ONE program
                                   # (much slower to compile); False: three device programs
        eval_scenes=-1,            # held-out scenes for eval.json (-1: the whole eval split)
        # the RWM's held-out quality also at planning steps T = 1 .. this of a stage-3 episode
        # of the IL policy (train/rwm_closed_loop.py; 0: off)
        closed_loop_steps=3,       # at most types.MAX_CLOSED_LOOP_STEPS (the log ends at 5 s)
        # closed-loop training states: each scene first drives a uniform 0 .. this many planning
        # steps of a stage-3 episode of the IL policy (candidates + labels at the state reached,
        # tokens re-observed; train/rwm_closed_loop.advance; 0: logged frames only): the states
        # stage 3 scores, so the RWM learns to rank plans there too
        closed_loop_train_steps=1,
        # auxiliary loss: the BEV sampler's features decoded into the BEV-semantic label
        # (a training target, never an input; needs rwm.bev_sampling; 0: off)
        bev_seg_weight=0.0,
        # auxiliary loss: the waypoint tokens predict the ground-truth candidate-scene geometry
        # (reward_model.interaction_features: a training target; needs rwm.aux_geometry; 0: off)
        geometry_weight=1.0,
    ))
    # --- ppo: stage 3, DPPO in closed loop inside the RWM (irlvla_jax/train/ppo.py,
    #     rollout.py, advantages.py) ---------------------------------------------------------
    c.ppo = ml_collections.ConfigDict(dict(
        num_updates=200,           # PPO updates; each = rollout + advantages + epochs x minibatches
        group_size=8,              # G samples per scene (B = data.batch_size scenes per update)
        horizon=2,                 # T planning steps of 0.5 s per closed-loop episode (1: single
                                   # shot; at most 3: every step scored against logged agents)
        reward="rwm",              # "rwm" (trained on the world model) or "scorer" (true EPDMS)
        log_scorer=True,           # also compute the true scorer's reward (logging only) on the
                                   # updates whose metrics are written (every log_every-th)
        closed_loop_ec=True,       # EC of each plan vs the previous step's plan in the reward
        advantage="gae",           # "gae" (value head) or "group" (normalised over the G samples)
        gamma=0.99, gae_lambda=0.95, gamma_denoise=0.99,
        normalize_advantages=True,  # standardise GAE advantages over the update's batch
        clip_first=0.02, clip_last=0.1, clip_rate=3.0,   # per-denoising-step clip schedule
        clip_mode=0.1,             # clip range of the classifier's mode choice
        # What RL trains: "planner" (denoiser + mode classifier: full DPPO, the paper's stage 3)
        # or "classifier" (the mode-classification head only, the denoiser stays IL's: an
        # ablation, configs/ablations/classifier_rl.py). README "Stage 3" has the figures.
        trainable="planner",
        eta=0.0, sigma_min_sample=0.04, sigma_min_logprob=0.1,   # chain noise = entropy floor
        # The chain's exploration noise: "white" (i.i.d. per waypoint and coordinate) or
        # "smooth" (chain_noise_dims coefficients on t, t^2, .. per coordinate: the policy
        # gradient then moves the plans only along smooth displacements; planner.py)
        chain_noise="smooth", chain_noise_dims=3,
        # The DPPO ratio of a denoising step: "chosen" (the executed mode's transition) or
        # "joint" (all M modes' transitions: exact). metrics log_ratio_gap_joint = the gap.
        chain_logprob="chosen",
        kl_coef=0.1,               # BC/KL term to the frozen IL policy (ReCogDrive 0.1)
        # IL's trajectory loss on the logged future at each scene's first planning step (the
        # ego at the logged state), added to the PPO loss with this weight (0: off): a training
        # target, as in stage 1, never an input (ppo.bc_loss); it keeps full DPPO's plans smooth
        bc_weight=0.05,
        vf_coef=0.5, value_hidden=128,
        epochs=2, minibatches=2,
        lr=1e-4, warmup_steps=0, weight_decay=0.0, clip_norm=1.0, end_lr_factor=1.0,
        log_every=5, ckpt_every=10, keep_ckpts=2,   # log_every: also how often log_scorer runs
        eval_scenes=-1,            # held-out scenes for rl/eval.json (-1: the whole eval split)
    ))
    return c
