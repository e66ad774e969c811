"""The host adapter: the only package of LoRA Lab that imports ComfyUI (`comfy.*`,
`folder_paths`, `server`). Everything else talks to ComfyUI through the names re-exported here,
so a change in ComfyUI's internals is mended in one small module:

- `version`: what this ComfyUI offers (feature detection, training flags, interrupt type);
- `demo`: the tiny random-weight models of the Demo Model node;
- `families`: which model classes train, their presets and LoRA key names;
- `autograd`: frozen-weight wrappers, checkpointing and in-place safety;
- `training_model`: the MODEL (and CLIP) prepared for training on a clone, encoding;
- `sampling`: sample images during training, applying a LoRA like LoraLoader;
- `folders`: model and dataset folders and their path rules;
- `server`: progress, events and routes of the running server.

ComfyUI modules are imported inside the functions: importing this package costs nothing at
ComfyUI start-up. Supported: ComfyUI 0.3.64 to 0.33.0.
"""

from .demo import DemoModel, build_demo_model, demo_families, randomize_module  # noqa: F401
from .families import demos, prediction_family, profile_of, target_modules, text_encoder_targets  # noqa: F401
from .folders import (find_lora, find_state_file, input_subfolders, lora_file_names, loras_folder,  # noqa: F401
                      rembg_model_folders, resolve_dataset_folder, state_file_names)
from .sampling import apply_lora, sample_images, sampler_names  # noqa: F401
from .server import Progress, emit, register_routes, save_temp_images  # noqa: F401
from .training_model import (TrainingModel, TrainingTextEncoder, clip_skip, encode_caption,  # noqa: F401
                             encode_images, latent_downscale, training_base, offload_from_device, pixel_multiple,
                             sampling_shift)
from .version import check_host, comfyui_version, interrupt_exception, interrupt_types, interrupted, log  # noqa: F401
