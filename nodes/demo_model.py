"""LoRALab Demo Model: a tiny random-weight Flux / SD1.5 / SDXL with text encoder(s) and VAE,
for smoke runs and tests. Stock loaders cannot load such small models (ComfyUI's Flux detection
hardcodes the full size), so this node builds them from ComfyUI's own classes."""

from comfy_api.latest import io

from . import demo_configs, host


class DemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoRALabDemoModel",
            display_name="LoRA Lab Demo Model (tiny, random weights)",
            category="LoRA Lab/testing",
            description="Builds a tiny random-weight model of the chosen family with its text "
                        "encoder(s) and VAE, for smoke runs of training workflows. It draws noise, "
                        "not pictures: use a real checkpoint loader for real training.",
            inputs=[
                # the families this ComfyUI has (feature-detected); entries are never renamed
                io.Combo.Input("family", options=host.demo_families(), default="Flux",
                               tooltip="Model family to imitate, with its text encoder(s) and VAE: Flux (Flux.1-dev, "
                                       "flow matching, CLIP-L + T5), SD1.5 (eps UNet, CLIP-L), SDXL (eps UNet, "
                                       "CLIP-L + CLIP-G), and the newer families this ComfyUI has."),
                io.Combo.Input("weight_dtype", options=list(demo_configs.WEIGHT_DTYPES), default="fp32",
                               tooltip="Storage dtype of the diffusion model's weights (text encoders "
                                       "and VAE stay fp32 on CPU)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seed of the random weights: the same seed builds the same model."),
            ],
            outputs=[
                io.Model.Output(tooltip="The tiny diffusion model (a ComfyUI ModelPatcher)."),
                io.Clip.Output(tooltip="The tiny text encoder(s) matching the family."),
                io.Vae.Output(tooltip="A tiny 8x VAE with the family's latent channel count."),
            ],
        )

    @classmethod
    def execute(cls, family, weight_dtype, seed) -> io.NodeOutput:
        demo = host.build_demo_model(family, weight_dtype, seed)
        return io.NodeOutput(demo.model, demo.clip, demo.vae)
