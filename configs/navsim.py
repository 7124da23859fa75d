"""Paper scale on real NAVSIM (navtrain -> navtest), for GPU/TPU pods.

    python launch.py all --config configs/navsim.py \
        --config.data.navsim_root=$OPENSCENE_DATA_ROOT --config.data.maps_root=$NUPLAN_MAPS_ROOT \
        --config.model.vision.pretrained=/ckpt/resnet34.safetensors \
        --config.model.semantic.llm.pretrained=/ckpt/Qwen2.5-3B

The two checkpoints are local files (nothing is downloaded): torchvision's ResNet-34 state dict
saved as safetensors, and the Hugging Face Qwen2.5-3B directory (config.json, safetensors shards,
tokenizer.json). Without them the backbone's frozen BatchNorms do not normalise and the LM
trains from scratch.

Starts from the tiny config and overrides sizes; see configs/tiny.py for what each field means.
"""

import os

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "navsim"
    c.workdir = "runs/navsim"

    d = c.data
    d.source = "navsim"
    d.navsim_root = os.environ.get("OPENSCENE_DATA_ROOT", "")
    d.maps_root = os.environ.get("NUPLAN_MAPS_ROOT", "")
    d.train_split = "navtrain"
    d.eval_split = "navtest"
    d.batch_size = 256
    d.num_workers = 16
    d.prefetch = 4
    d.sizes.update(dict(
        num_future=10,
        cameras=("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0"),
        image_hw=(256, 704),
        lidar_bev_hw=(256, 256),
        bev_hw=(128, 128),
        bev_range_m=32.0,
        max_agents=128,
        # Exact map (see tiny.py); not yet measured on real nuPlan maps: a scene that needs more
        # is refused naming the size to raise (or skipped and counted with data.skip_bad).
        max_polygons=384,
        max_polygon_vertices=256,
        max_centerline=1024,
        max_red_lights=32,
        max_lanes=128,
        lane_points=20,
    ))
    # --- model encoders at paper scale (irlvla_jax/models) ------------------------------------
    m = c.model
    m.dtype = "bfloat16"
    m.vision.update(dict(kind="resnet", stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512),
                         stem_width=64, norm="frozen_bn", out_dim=256,   # ResNet-34, stride 32
                         remat="nothing_saveable",   # per basic block (README: memory)
                         pretrained=""))    # torchvision resnet34 .safetensors (see above)
    m.bev.update(dict(query_hw=(128, 128), range_m=32.0, dim=256, num_layers=3, num_heads=8,
                      mlp_dim=512, depths=(2.0, 5.0, 10.0, 20.0, 35.0, 55.0),    # 64 m square
                      # memory (README, "Memory per device"): the 16,384 queries x 1,408 camera
                      # tokens x 8 heads score matrix in chunks of 1,024 queries (the IL step's
                      # largest buffer otherwise); each layer recomputed in the backward pass
                      attn_q_chunk=1024, remat="nothing_saveable"))
    m.detection.update(dict(num_queries=30, num_layers=3, num_heads=8, mlp_dim=512))
    m.map.update(dict(num_tokens=64, num_layers=2, num_heads=8, mlp_dim=512, seg_hw=(128, 128)))
    m.semantic.update(dict(adaptor_tokens=64, adaptor_heads=16, num_meta_tokens=8, out_dim=256,
                           prompt_len=96))
    m.semantic.llm.update(dict(    # Qwen2.5-3B shapes: load its HF checkpoint with `pretrained`
        vocab_size=151936, hidden_size=2048, num_layers=36, num_heads=16, num_kv_heads=2,
        head_dim=128, intermediate_size=11008, rms_norm_eps=1e-6, rope_theta=1000000.0,
        qkv_bias=True, tie_word_embeddings=True,
        remat="nothing_saveable",  # keep only each layer's input for the backward pass
        pretrained=""))            # the Qwen2.5-3B HF directory (see above)

    # --- model.planner + il at paper scale ---------------------------------------------------
    c.model.privileged = ()    # AgentInput only: agents and map from camera/LiDAR perception
    c.model.planner.update(dict(num_anchors=20, d_model=256, num_heads=8, num_blocks=2,
                                mlp_ratio=4, fourier_freqs=8, bev_pool=4))
    c.il.update(dict(num_steps=8000, lr=2e-4, warmup_steps=500, weight_decay=1e-2,
                     log_every=50, eval_every=1000, ckpt_every=1000, eval_batches=50,
                     freeze=()))    # e.g. ("semantic/llm",): keep the pretrained LM as loaded
    # --- rwm + irl at paper scale (stage 2) ------------------------------------------------
    c.rwm.update(dict(scene_encoder="policy", d_model=256, num_heads=8, mlp_dim=1024,
                      scene_layers=2, num_blocks=3, dtype="bfloat16"))
    c.irl.update(dict(num_steps=20000, lr=2e-4, warmup_steps=500, weight_decay=1e-2,
                      num_vocab=16, num_policy=16, num_perturb=32,
                      log_every=50, ckpt_every=1000, eval_scenes=2000))
    # --- ppo at paper scale (stage 3) ----------------------------------------------------------
    # Full DPPO (denoiser + classifier) with smooth chain noise and the BC term, as the tiny
    # default (configs/tiny.py); lr scaled down for the larger model.
    c.ppo.update(dict(num_updates=2000, group_size=8, horizon=3, epochs=4, minibatches=8,
                      lr=2e-5, trainable="planner", log_every=10, ckpt_every=100))
    return c
