"""Published configurations of the real models, written out so the benchmarks build the real
architectures with random weights and download nothing.

SDXL (``stabilityai/sdxl-turbo``: ``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``
config.json) and SAM 2.1 (the Hiera trunks of ``sam2.1_hiera_t.yaml`` / ``sam2.1_hiera_b+.yaml``
in facebookresearch/sam2, in transformers' ``Sam2HieraDetConfig`` terms: per-stage widths and
heads double, as Hiera's ``dim_mul``/``head_mul`` of 2 make them).
"""

# stabilityai/sdxl-turbo unet/config.json (the SDXL base UNet), written out: no download.
SDXL_UNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 64,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
# The SDXL VAE (sdxl-turbo vae/config.json).
SDXL_VAE_CONFIG = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
# CLIP ViT-L/14 text tower (sdxl-turbo text_encoder/config.json, CLIPTextModel).
SDXL_TEXT_ENCODER_CONFIG = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-05,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# OpenCLIP ViT-bigG/14 text tower (sdxl-turbo text_encoder_2/config.json, CLIPTextModelWithProjection).
SDXL_TEXT_ENCODER_2_CONFIG = {
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": 77,
    "projection_dim": 1280,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-05,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# SAM 2.1 Hiera trunks (Sam2HieraDetConfig fields) and their FPN input channels (largest first).
SAM21_HIERA = {
    "sam2.1-hiera-tiny": {
        "hidden_size": 96,
        "embed_dim_per_stage": [96, 192, 384, 768],
        "num_attention_heads_per_stage": [1, 2, 4, 8],
        "blocks_per_stage": [1, 2, 7, 2],
        "global_attention_blocks": [5, 7, 9],
        "window_positional_embedding_background_size": [7, 7],
        "window_size_per_stage": [8, 4, 14, 7],
    },
    "sam2.1-hiera-base-plus": {
        "hidden_size": 112,
        "embed_dim_per_stage": [112, 224, 448, 896],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "blocks_per_stage": [2, 3, 16, 3],
        "global_attention_blocks": [12, 16, 20],
        "window_positional_embedding_background_size": [14, 14],
        "window_size_per_stage": [8, 4, 14, 7],
    },
}


def sam21_config(name: str):  # -> transformers.Sam2Config
    """The full-size SAM 2.1 ``name`` (a key of SAM21_HIERA): its trunk, a 256-wide FPN over the
    three finest levels, transformers' default prompt encoder and mask decoder (SAM 2's)."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    trunk = SAM21_HIERA[name]
    vision = Sam2VisionConfig(backbone_config=Sam2HieraDetConfig(**trunk), backbone_channel_list=trunk["embed_dim_per_stage"][::-1])
    return Sam2Config(vision_config=vision)
