"""Every setting of AUTOMATIC1111 1.10.1, as ``GET /sdapi/v1/options`` lists them, with its default
and the type and range its settings UI allows (the facts ``POST /options`` validates against).

Read from A1111 v1.10.1's ``modules/shared_options.py``, the prompt-comments script, and the
options the built-in extensions register at start in UI mode (``--api``): Lora, canvas-zoom-and-pan,
extra-options-section, LDSR, ScuNET, SwinIR and hypertile. Not listed: the ``prioritized_callbacks_*``
options, which depend on the installed scripts and are added after the API's model is built.

Kinds: ``BOOL``, ``STR`` (any string; ``None`` too where the default is ``None``), ``LIST`` (a list
of strings, from ``choices`` when given), ``INT`` / ``FLOAT`` (finite, within ``minimum``..``maximum``
where the UI has a slider), ``NUMBER`` (a finite number: the UI's free number box), ``CHOICE`` (one
of ``choices``: a radio or dropdown with fixed entries) and ``HTML`` (explanatory text in the
settings page: listed, never saved). Dropdowns whose entries depend on the install (checkpoints,
VAEs, face restorers, attention optimisations, ...) are ``STR``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    BOOL = "bool"
    STR = "str"
    LIST = "list"
    INT = "int"
    FLOAT = "float"
    NUMBER = "number"
    CHOICE = "choice"
    HTML = "html"


BOOL, STR, LIST, INT, FLOAT, NUMBER, CHOICE, HTML = Kind


@dataclass(frozen=True)
class OptionSpec:
    key: str
    default: Any
    kind: Kind
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    restrict_api: bool = False  # A1111 ignores it when set over the API

    @property
    def wire_as_float(self) -> bool:
        """A1111's response model types an option by its default, mapping int to float, and leaves
        falsy defaults untyped: ``CLIP_stop_at_last_layers`` is served as ``1.0``, ``eta_noise_seed_delta``
        as ``0``."""
        number = isinstance(self.default, int | float) and not isinstance(self.default, bool)
        return number and bool(self.default)


def _opt(
    key: str,
    default: Any,
    kind: Kind | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    choices: tuple[str, ...] | None = None,
    restrict_api: bool = False,
) -> OptionSpec:
    if kind is None:
        if isinstance(default, bool):
            kind = BOOL
        elif isinstance(default, list):
            kind = LIST
        elif choices is not None:
            kind = CHOICE
        else:
            kind = STR
    return OptionSpec(key, default, kind, minimum, maximum, choices, restrict_api)


def _html(key: str) -> OptionSpec:
    return OptionSpec(key, _HTML_TEXT, HTML)


# A1111 serves its settings page's explanation paragraphs under these keys; we serve a pointer.
_HTML_TEXT = "Explanatory text of the AUTOMATIC1111 settings page; not a setting."

OPTIONS: tuple[OptionSpec, ...] = (
    # saving-images
    _opt("samples_save", True),
    _opt("samples_format", "png"),
    _opt("samples_filename_pattern", ""),
    _opt("save_images_add_number", True),
    _opt("save_images_replace_action", "Replace", choices=("Replace", "Add number suffix")),
    _opt("grid_save", True),
    _opt("grid_format", "png"),
    _opt("grid_extended_filename", False),
    _opt("grid_only_if_multiple", True),
    _opt("grid_prevent_empty_spots", False),
    _opt("grid_zip_filename_pattern", ""),
    _opt("n_rows", -1, INT, -1, 16),
    _opt("font", ""),
    _opt("grid_text_active_color", "#000000"),
    _opt("grid_text_inactive_color", "#999999"),
    _opt("grid_background_color", "#ffffff"),
    _opt("save_images_before_face_restoration", False),
    _opt("save_images_before_highres_fix", False),
    _opt("save_images_before_color_correction", False),
    _opt("save_mask", False),
    _opt("save_mask_composite", False),
    _opt("jpeg_quality", 80, INT, 1, 100),
    _opt("webp_lossless", False),
    _opt("export_for_4chan", True),
    _opt("img_downscale_threshold", 4.0, NUMBER),
    _opt("target_side_length", 4000, NUMBER),
    _opt("img_max_size_mp", 200, NUMBER),
    _opt("use_original_name_batch", True),
    _opt("use_upscaler_name_as_suffix", False),
    _opt("save_selected_only", True),
    _opt("save_write_log_csv", True),
    _opt("save_init_img", False),
    _opt("temp_dir", ""),
    _opt("clean_temp_dir_at_start", False),
    _opt("save_incomplete_images", False),
    _opt("notification_audio", True),
    _opt("notification_volume", 100, INT, 0, 100),
    # saving-paths
    _opt("outdir_samples", ""),
    _opt("outdir_txt2img_samples", "outputs/txt2img-images"),
    _opt("outdir_img2img_samples", "outputs/img2img-images"),
    _opt("outdir_extras_samples", "outputs/extras-images"),
    _opt("outdir_grids", ""),
    _opt("outdir_txt2img_grids", "outputs/txt2img-grids"),
    _opt("outdir_img2img_grids", "outputs/img2img-grids"),
    _opt("outdir_save", "log/images"),
    _opt("outdir_init_images", "outputs/init-images"),
    # saving-to-dirs
    _opt("save_to_dirs", True),
    _opt("grid_save_to_dirs", True),
    _opt("use_save_to_dirs_for_ui", False),
    _opt("directories_filename_pattern", "[date]"),
    _opt("directories_max_prompt_words", 8, INT, 1, 20),
    # upscaling
    _opt("ESRGAN_tile", 192, INT, 0, 512),
    _opt("ESRGAN_tile_overlap", 8, INT, 0, 48),
    _opt("realesrgan_enabled_models", ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"]),
    _opt("dat_enabled_models", ["DAT x2", "DAT x3", "DAT x4"]),
    _opt("DAT_tile", 192, INT, 0, 512),
    _opt("DAT_tile_overlap", 8, INT, 0, 48),
    _opt("upscaler_for_img2img", None),
    _opt("set_scale_by_when_changing_upscaler", False),
    # face-restoration
    _opt("face_restoration", False),
    _opt("face_restoration_model", "CodeFormer"),
    _opt("code_former_weight", 0.5, FLOAT, 0, 1),
    _opt("face_restoration_unload", False),
    # system
    _opt("auto_launch_browser", "Local", choices=("Disable", "Local", "Remote")),
    _opt("enable_console_prompts", False),
    _opt("show_warnings", False),
    _opt("show_gradio_deprecation_warnings", True),
    _opt("memmon_poll_rate", 8, INT, 0, 40),
    _opt("samples_log_stdout", False),
    _opt("multiple_tqdm", True),
    _opt("enable_upscale_progressbar", True),
    _opt("print_hypernet_extra", False),
    _opt("list_hidden_files", True),
    _opt("disable_mmap_load_safetensors", False),
    _opt("hide_ldm_prints", True),
    _opt("dump_stacks_on_signal", False),
    _html("profiling_explanation"),
    # profiler
    _opt("profiling_enable", False),
    _opt("profiling_activities", ["CPU"], choices=("CPU", "CUDA")),
    _opt("profiling_record_shapes", True),
    _opt("profiling_profile_memory", True),
    _opt("profiling_with_stack", True),
    _opt("profiling_filename", "trace.json"),
    # API
    _opt("api_enable_requests", True, restrict_api=True),
    _opt("api_forbid_local_requests", True, restrict_api=True),
    _opt("api_useragent", "", restrict_api=True),
    # training
    _opt("unload_models_when_training", False),
    _opt("pin_memory", False),
    _opt("save_optimizer_state", False),
    _opt("save_training_settings_to_txt", True),
    _opt("dataset_filename_word_regex", ""),
    _opt("dataset_filename_join_string", " "),
    _opt("training_image_repeats_per_epoch", 1, INT),
    _opt("training_write_csv_every", 500, NUMBER),
    _opt("training_xattention_optimizations", False),
    _opt("training_enable_tensorboard", False),
    _opt("training_tensorboard_save_images", False),
    _opt("training_tensorboard_flush_every", 120, NUMBER),
    # sd
    _opt("sd_model_checkpoint", None),
    _opt("sd_checkpoints_limit", 1, INT, 1, 10),
    _opt("sd_checkpoints_keep_in_cpu", True),
    _opt("sd_checkpoint_cache", 0, INT, 0, 10),
    _opt("sd_unet", "Automatic"),
    _opt("enable_quantization", False),
    _opt("emphasis", "Original", choices=("None", "Ignore", "Original", "No norm")),
    _opt("enable_batch_seeds", True),
    _opt("comma_padding_backtrack", 20, INT, 0, 74),
    _opt("sdxl_clip_l_skip", False),
    _opt("CLIP_stop_at_last_layers", 1, INT, 1, 12),
    _opt("upcast_attn", False),
    _opt("randn_source", "GPU", choices=("GPU", "CPU", "NV")),
    _opt("tiling", False),
    _opt("hires_fix_refiner_pass", "second pass", choices=("first pass", "second pass", "both passes")),
    # sdxl
    _opt("sdxl_crop_top", 0, NUMBER),
    _opt("sdxl_crop_left", 0, NUMBER),
    _opt("sdxl_refiner_low_aesthetic_score", 2.5, NUMBER),
    _opt("sdxl_refiner_high_aesthetic_score", 6.0, NUMBER),
    # sd3
    _opt("sd3_enable_t5", False),
    _html("sd_vae_explanation"),
    # vae
    _opt("sd_vae_checkpoint_cache", 0, INT, 0, 10),
    _opt("sd_vae", "Automatic"),
    _opt("sd_vae_overrides_per_model_preferences", True),
    _opt("auto_vae_precision_bfloat16", False),
    _opt("auto_vae_precision", True),
    _opt("sd_vae_encode_method", "Full", choices=("Full", "TAESD")),
    _opt("sd_vae_decode_method", "Full", choices=("Full", "TAESD")),
    # img2img
    _opt("inpainting_mask_weight", 1.0, FLOAT, 0.0, 1.0),
    _opt("initial_noise_multiplier", 1.0, FLOAT, 0.0, 1.5),
    _opt("img2img_extra_noise", 0.0, FLOAT, 0.0, 1.0),
    _opt("img2img_color_correction", False),
    _opt("img2img_fix_steps", False),
    _opt("img2img_background_color", "#ffffff"),
    _opt("img2img_editor_height", 720, INT, 80, 1600),
    _opt("img2img_sketch_default_brush_color", "#ffffff"),
    _opt("img2img_inpaint_mask_brush_color", "#ffffff"),
    _opt("img2img_inpaint_sketch_default_brush_color", "#ffffff"),
    _opt("return_mask", False),
    _opt("return_mask_composite", False),
    _opt("img2img_batch_show_results_limit", 32, INT, -1, 1000),
    _opt("overlay_inpaint", True),
    # optimizations
    _opt("cross_attention_optimization", "Automatic"),
    _opt("s_min_uncond", 0.0, FLOAT, 0.0, 15.0),
    _opt("s_min_uncond_all", False),
    _opt("token_merging_ratio", 0.0, FLOAT, 0.0, 0.9),
    _opt("token_merging_ratio_img2img", 0.0, FLOAT, 0.0, 0.9),
    _opt("token_merging_ratio_hr", 0.0, FLOAT, 0.0, 0.9),
    _opt("pad_cond_uncond", False),
    _opt("pad_cond_uncond_v0", False),
    _opt("persistent_cond_cache", True),
    _opt("batch_cond_uncond", True),
    _opt("fp8_storage", "Disable", choices=("Disable", "Enable for SDXL", "Enable")),
    _opt("cache_fp16_weight", False),
    # compatibility
    _opt("auto_backcompat", True),
    _opt("use_old_emphasis_implementation", False),
    _opt("use_old_karras_scheduler_sigmas", False),
    _opt("no_dpmpp_sde_batch_determinism", False),
    _opt("use_old_hires_fix_width_height", False),
    _opt("hires_fix_use_firstpass_conds", False),
    _opt("use_old_scheduling", False),
    _opt("use_downcasted_alpha_bar", False),
    _opt("refiner_switch_by_sample_steps", False),
    # interrogate
    _opt("interrogate_keep_models_in_memory", False),
    _opt("interrogate_return_ranks", False),
    _opt("interrogate_clip_num_beams", 1, INT, 1, 16),
    _opt("interrogate_clip_min_length", 24, INT, 1, 128),
    _opt("interrogate_clip_max_length", 48, INT, 1, 256),
    _opt("interrogate_clip_dict_limit", 1500, NUMBER),
    _opt("interrogate_clip_skip_categories", []),
    _opt("interrogate_deepbooru_score_threshold", 0.5, FLOAT, 0, 1),
    _opt("deepbooru_sort_alpha", True),
    _opt("deepbooru_use_spaces", True),
    _opt("deepbooru_escape", True),
    _opt("deepbooru_filter_tags", ""),
    # extra_networks
    _opt("extra_networks_show_hidden_directories", True),
    _opt("extra_networks_dir_button_function", False),
    _opt("extra_networks_hidden_models", "When searched", choices=("Always", "When searched", "Never")),
    _opt("extra_networks_default_multiplier", 1.0, FLOAT, 0.0, 2.0),
    _opt("extra_networks_card_width", 0, NUMBER),
    _opt("extra_networks_card_height", 0, NUMBER),
    _opt("extra_networks_card_text_scale", 1.0, FLOAT, 0.0, 2.0),
    _opt("extra_networks_card_show_desc", True),
    _opt("extra_networks_card_description_is_html", False),
    _opt(
        "extra_networks_card_order_field", "Path", choices=("Path", "Name", "Date Created", "Date Modified")
    ),
    _opt("extra_networks_card_order", "Ascending", choices=("Ascending", "Descending")),
    _opt("extra_networks_tree_view_style", "Dirs", choices=("Tree", "Dirs")),
    _opt("extra_networks_tree_view_default_enabled", True),
    _opt("extra_networks_tree_view_default_width", 180, NUMBER),
    _opt("extra_networks_add_text_separator", " "),
    _opt("ui_extra_networks_tab_reorder", ""),
    _opt("textual_inversion_print_at_load", False),
    _opt("textual_inversion_add_hashes_to_infotext", True),
    _opt("sd_hypernetwork", "None"),
    # ui_prompt_editing
    _opt("keyedit_precision_attention", 0.1, FLOAT, 0.01, 0.2),
    _opt("keyedit_precision_extra", 0.05, FLOAT, 0.01, 0.2),
    _opt("keyedit_delimiters", ".,\\/!?%^*;:{}=`~() "),
    _opt(
        "keyedit_delimiters_whitespace",
        ["Tab", "Carriage Return", "Line Feed"],
        choices=("Tab", "Carriage Return", "Line Feed"),
    ),
    _opt("keyedit_move", True),
    _opt("disable_token_counters", False),
    _opt("include_styles_into_token_counters", True),
    # ui_gallery
    _opt("return_grid", True),
    _opt("do_not_show_images", False),
    _opt("js_modal_lightbox", True),
    _opt("js_modal_lightbox_initially_zoomed", True),
    _opt("js_modal_lightbox_gamepad", False),
    _opt("js_modal_lightbox_gamepad_repeat", 250, NUMBER),
    _opt("sd_webui_modal_lightbox_icon_opacity", 1, FLOAT, 0.0, 1),
    _opt("sd_webui_modal_lightbox_toolbar_opacity", 0.9, FLOAT, 0.0, 1),
    _opt("gallery_height", ""),
    _opt(
        "open_dir_button_choice",
        "Subdirectory",
        choices=("Output Root", "Subdirectory", "Subdirectory (even temp dir)"),
    ),
    # ui_alternatives
    _opt("compact_prompt_box", False),
    _opt("samplers_in_dropdown", True),
    _opt("dimensions_and_batch_together", True),
    _opt("sd_checkpoint_dropdown_use_short", False),
    _opt("hires_fix_show_sampler", False),
    _opt("hires_fix_show_prompts", False),
    _opt("txt2img_settings_accordion", False),
    _opt("img2img_settings_accordion", False),
    _opt("interrupt_after_current", True),
    # ui
    _opt("localization", "None"),
    _opt("quicksettings_list", ["sd_model_checkpoint"]),
    _opt("ui_tab_order", []),
    _opt("hidden_tabs", []),
    _opt("ui_reorder_list", []),
    _opt("gradio_theme", "Default"),
    _opt("gradio_themes_cache", True),
    _opt("show_progress_in_title", True),
    _opt("send_seed", True),
    _opt("send_size", True),
    _opt("enable_reloading_ui_scripts", False),
    _html("infotext_explanation"),
    # infotext
    _opt("enable_pnginfo", True),
    _opt("save_txt", False),
    _opt("add_model_name_to_info", True),
    _opt("add_model_hash_to_info", True),
    _opt("add_vae_name_to_info", True),
    _opt("add_vae_hash_to_info", True),
    _opt("add_user_name_to_info", False),
    _opt("add_version_to_infotext", True),
    _opt("disable_weights_auto_swap", True),
    _opt("infotext_skip_pasting", []),
    _opt("infotext_styles", "Apply if any", choices=("Ignore", "Apply", "Discard", "Apply if any")),
    # ui
    _opt("show_progressbar", True),
    _opt("live_previews_enable", True),
    _opt("live_previews_image_format", "png", choices=("jpeg", "png", "webp")),
    _opt("show_progress_grid", True),
    _opt("show_progress_every_n_steps", 10, INT, -1, 32),
    _opt("show_progress_type", "Approx NN", choices=("Full", "Approx NN", "Approx cheap", "TAESD")),
    _opt("live_preview_allow_lowvram_full", False),
    _opt("live_preview_content", "Prompt", choices=("Combined", "Prompt", "Negative prompt")),
    _opt("live_preview_refresh_period", 1000, NUMBER),
    _opt("live_preview_fast_interrupt", False),
    _opt("js_live_preview_in_modal_lightbox", False),
    _opt("prevent_screen_sleep_during_generation", True),
    # sampler-params
    _opt("hide_samplers", []),
    _opt("eta_ddim", 0.0, FLOAT, 0.0, 1.0),
    _opt("eta_ancestral", 1.0, FLOAT, 0.0, 1.0),
    _opt("ddim_discretize", "uniform", choices=("uniform", "quad")),
    _opt("s_churn", 0.0, FLOAT, 0.0, 100.0),
    _opt("s_tmin", 0.0, FLOAT, 0.0, 10.0),
    _opt("s_tmax", 0.0, FLOAT, 0.0, 999.0),
    _opt("s_noise", 1.0, FLOAT, 0.0, 1.1),
    _opt("sigma_min", 0.0, NUMBER),
    _opt("sigma_max", 0.0, NUMBER),
    _opt("rho", 0.0, NUMBER),
    _opt("eta_noise_seed_delta", 0, INT, 0, 2**53 - 1),  # added to seeds; exact as a JSON number
    _opt("always_discard_next_to_last_sigma", False),
    _opt("sgm_noise_multiplier", False),
    _opt("uni_pc_variant", "bh1", choices=("bh1", "bh2", "vary_coeff")),
    _opt("uni_pc_skip_type", "time_uniform", choices=("time_uniform", "time_quadratic", "logSNR")),
    _opt("uni_pc_order", 3, INT, 1, 50),
    _opt("uni_pc_lower_order_final", True),
    _opt("sd_noise_schedule", "Default", choices=("Default", "Zero Terminal SNR")),
    _opt("skip_early_cond", 0.0, FLOAT, 0.0, 1.0),
    _opt("beta_dist_alpha", 0.6, FLOAT, 0.01, 1.0),
    _opt("beta_dist_beta", 0.6, FLOAT, 0.01, 1.0),
    # postprocessing
    _opt("postprocessing_enable_in_main_ui", []),
    _opt("postprocessing_disable_in_extras", []),
    _opt("postprocessing_operation_order", []),
    _opt("upscaling_max_images_in_cache", 5, INT, 0, 10),
    _opt("postprocessing_existing_caption_action", "Ignore", choices=("Ignore", "Keep", "Prepend", "Append")),
    # hidden
    _opt("disabled_extensions", []),
    _opt("disable_all_extensions", "none", choices=("none", "extra", "all")),
    _opt("restore_config_state_file", ""),
    _opt("sd_checkpoint_hash", ""),
    # sd (comments.py)
    _opt("enable_prompt_comments", True),
    # extra_networks (lora_script.py)
    _opt("sd_lora", "None"),
    _opt("lora_preferred_name", "Alias from file", choices=("Alias from file", "Filename")),
    _opt("lora_add_hashes_to_infotext", True),
    _opt("lora_bundled_ti_to_infotext", True),
    _opt("lora_show_all", False),
    _opt("lora_hide_unknown_for_versions", [], choices=("SD1", "SD2", "SDXL")),
    _opt("lora_in_memory_limit", 0, INT),
    _opt("lora_not_found_warning_console", False),
    _opt("lora_not_found_gradio_warning", False),
    # compatibility (lora_script.py)
    _opt("lora_functional", False),
    # canvas_hotkey (hotkey_config.py)
    _opt("canvas_hotkey_zoom", "Alt", choices=("Shift", "Ctrl", "Alt")),
    _opt("canvas_hotkey_adjust", "Ctrl", choices=("Shift", "Ctrl", "Alt")),
    _opt("canvas_hotkey_shrink_brush", "Q"),
    _opt("canvas_hotkey_grow_brush", "W"),
    _opt("canvas_hotkey_move", "F"),
    _opt("canvas_hotkey_fullscreen", "S"),
    _opt("canvas_hotkey_reset", "R"),
    _opt("canvas_hotkey_overlap", "O"),
    _opt("canvas_show_tooltip", True),
    _opt("canvas_auto_expand", True),
    _opt("canvas_blur_prompt", False),
    _opt(
        "canvas_disabled_functions",
        ["Overlap"],
        choices=(
            "Zoom",
            "Adjust brush size",
            "Hotkey enlarge brush",
            "Hotkey shrink brush",
            "Moving canvas",
            "Fullscreen",
            "Reset Zoom",
            "Overlap",
        ),
    ),
    _html("settings_in_ui"),
    # settings_in_ui (extra_options_section.py)
    _opt("extra_options_txt2img", []),
    _opt("extra_options_img2img", []),
    _opt("extra_options_cols", 1, INT, 1, 20),
    _opt("extra_options_accordion", False),
    # upscaling (ldsr_model.py)
    _opt("ldsr_steps", 100, INT, 1, 200),
    _opt("ldsr_cached", False),
    _opt("SCUNET_tile", 256, INT, 0, 512),
    _opt("SCUNET_tile_overlap", 8, INT, 0, 64),
    _opt("SWIN_tile", 192, INT, 16, 512),
    _opt("SWIN_tile_overlap", 8, INT, 0, 48),
    _opt("SWIN_torch_compile", False),
    _html("hypertile_explanation"),
    # hypertile (hypertile_script.py)
    _opt("hypertile_enable_unet", False),
    _opt("hypertile_enable_unet_secondpass", False),
    _opt("hypertile_max_depth_unet", 3, INT, 0, 3),
    _opt("hypertile_max_tile_unet", 256, INT, 0, 512),
    _opt("hypertile_swap_size_unet", 3, INT, 0, 64),
    _opt("hypertile_enable_vae", False),
    _opt("hypertile_max_depth_vae", 3, INT, 0, 3),
    _opt("hypertile_max_tile_vae", 128, INT, 0, 512),
    _opt("hypertile_swap_size_vae", 3, INT, 0, 64),
)

# Bounds on every value, whatever its option: A1111 saves anything, and one huge or endless value
# saved here would be served to (and acted on for) every later request.
MAX_TEXT = 4096  # characters of a string option (prompts, patterns, names)
MAX_NAME = 1024  # characters of a checkpoint or VAE name (looked up, not checked by check_value)
MAX_LIST = 256  # entries of a list option
MAX_NUMBER = 2**53  # magnitude of a number option without its own range (exact in JSON)

SPECS: dict[str, OptionSpec] = {spec.key: spec for spec in OPTIONS}
DEFAULTS: dict[str, Any] = {spec.key: spec.default for spec in OPTIONS}


def check_value(spec: OptionSpec, value: Any) -> str | None:
    """Why ``value`` is not a valid ``spec`` (A1111's UI types and ranges), or None if it is."""
    if spec.kind is HTML:
        return None
    if value is None:
        return None if spec.default is None else "must not be null"
    if spec.kind is BOOL:
        return None if isinstance(value, bool) else "must be true or false"
    if spec.kind in (STR, CHOICE):
        if not isinstance(value, str):
            return "must be a string"
        if len(value) > MAX_TEXT:
            return f"must be at most {MAX_TEXT} characters"
        if spec.choices is not None and value not in spec.choices:
            return "must be one of " + ", ".join(repr(c) for c in spec.choices)
        return None
    if spec.kind is LIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "must be a list of strings"
        if len(value) > MAX_LIST or any(len(v) > MAX_TEXT for v in value):
            return f"must be at most {MAX_LIST} strings of at most {MAX_TEXT} characters"
        if spec.choices is not None and any(v not in spec.choices for v in value):
            return "entries must be among " + ", ".join(repr(c) for c in spec.choices)
        return None
    return _check_number(spec, value)


def _check_number(spec: OptionSpec, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not math.isfinite(value):
        return "must be a finite number"
    if spec.kind is INT and value != int(value):
        return "must be a whole number"
    lo = spec.minimum if spec.minimum is not None else -MAX_NUMBER
    hi = spec.maximum if spec.maximum is not None else MAX_NUMBER
    if not lo <= value <= hi:
        return f"must be from {lo:g} to {hi:g}"
    return None


def normalise(spec: OptionSpec, value: Any) -> Any:
    """The value as stored: whole numbers of int options as ints (a round-tripped ``2.0`` is ``2``)."""
    if spec.kind is INT and isinstance(value, float):
        return int(value)
    return value


def wire_value(spec: OptionSpec, value: Any) -> Any:
    """The value as A1111's ``GET /options`` serialises it."""
    if spec.wire_as_float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value
