"""The skeleton Swin V1 and V2 share: a patch embedding, stages, output norms and a head.

:class:`SwinBase` holds everything both models do alike -- configuration
checks, the features-only backbone (``out_indices``, one LayerNorm
``norm{i}`` per output stage), the backend switch, gradient checkpointing,
input checks, ``forward_features`` / ``forward_intermediates`` /
``forward_head``, the FLOP count and the initialisation -- so that
:mod:`.swin` and :mod:`.swin_v2` hold only their blocks and stages, and
neither imports the other.  :class:`SwinStage` is the same for a stage.

The residual stream between stages is a pair ``(x, branch)``: the stage's
map is ``x + branch``, with ``branch`` the last block's MLP branch not yet
added (``None`` when the stage has closed the sum).  V1 leaves the add
open so that it fuses with the LayerNorm that follows it
(:func:`swin_ext.layers.add_layernorm`, flash-attention's and Mamba's
``Block(hidden_states, residual)`` idiom); V2's res-post-norm blocks close
every add themselves, so its stages always return ``branch=None``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..layers import Linear, add_layernorm, residual_add
from ..layers.chunking import inference_image_chunk
from ..layers.helpers import check_backend, int_field, int_list_field, is_int, rate_field, real_field, to_2tuple
from ..layers.patch_embed import PatchEmbed
from ._features import OUTPUT_FORMATS, feature_info, normalize_indices

__all__ = [
    "FusedBackend",
    "SwinBase",
    "SwinStage",
    "SwinBlock",
    "check_config",
    "check_attention_dims",
    "check_input",
    "check_block",
    "attention_flops",
    "block_flops",
    "init_weights",
    "GLOBAL_POOLS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "default_pretrained_cfg",
]

#: ImageNet's per-channel mean and standard deviation (RGB, pixel values in [0, 1])
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the pooling ``reset_classifier(n, global_pool)`` / ``forward_head`` accept (timm's names): the mean,
#: the max, their average, or ``""`` for none (``forward_head`` then keeps the map ``(B, H, W, C)``)
GLOBAL_POOLS = ("avg", "max", "avgmax", "")

# timm's group ordinal that joins a parameter group with the one sorted before it
# (``timm.models._manipulate.MATCH_PREV_GROUP``), and one that sorts after a stage's blocks.
_MATCH_PREV = 99999
_AFTER_BLOCKS = 99998


def default_pretrained_cfg(img_size: Tuple[int, int], in_chans: int, num_classes: int,
                           patch_size: int = 4, num_layers: int = 4) -> Dict[str, Any]:
    """timm's ``pretrained_cfg`` of a Swin model of this input: what
    ``timm.data.resolve_data_config({}, model=m)`` reads to build the model's
    evaluation transform.

    timm's values for its Swin V1 / V2 releases: bicubic resizing, the centre
    crop keeping 90% of the side (100% at 384 px and above, the
    ``*_384`` releases), ImageNet's mean and std (``0.5`` per channel for
    inputs that are not RGB); the head is ``head`` (timm's own Swin names it
    ``head.fc``).  ``fixed_input_size`` is ``False``: any input size runs.
    """
    H, W = img_size
    reduction = patch_size * 2 ** (num_layers - 1)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,) * in_chans, (0.5,) * in_chans)
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": (in_chans, H, W),
        "pool_size": (-(-H // reduction), -(-W // reduction)),
        "crop_pct": 1.0 if min(H, W) >= 384 else 0.9,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": mean,
        "std": std,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
    }


# --------------------------------------------------------------------------- configuration checks


def check_config(img_size: Tuple[int, int], patch_size: int, in_chans: int, num_classes: int, embed_dim: int,
                 depths: Sequence[int], num_heads: Sequence[int], mlp_ratio: float, **rates: float) -> None:
    """Every field both models share (the window is checked by each model); ``TypeError`` /
    ``ValueError`` naming the field.  ``rates``: dropout rates by name, each in ``[0, 1)``."""
    int_field(patch_size, "patch_size", 1)
    if img_size[0] % patch_size or img_size[1] % patch_size:
        raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
    int_field(in_chans, "in_chans", 1)
    int_field(num_classes, "num_classes", 0)
    int_field(embed_dim, "embed_dim", 1)
    if len(depths) == 0 or any(not is_int(d) or d < 1 for d in depths):
        raise ValueError(f"depths must be a non-empty list of positive ints, got {depths!r}")
    if len(depths) != len(num_heads):
        raise ValueError(f"depths (len {len(depths)}) and num_heads (len {len(num_heads)}) must have the same length")
    for i, h in enumerate(num_heads):
        dim = embed_dim * 2**i
        if not is_int(h) or h < 1 or dim % h:
            raise ValueError(f"num_heads[{i}]={h!r} does not divide the stage-{i} dim {dim}")
    real_field(mlp_ratio, "mlp_ratio")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
    if int(embed_dim * mlp_ratio) < 1:
        raise ValueError(
            f"mlp_ratio {mlp_ratio!r} gives the stage-0 MLP (dim {embed_dim}) a hidden width of "
            f"int({embed_dim} * {mlp_ratio!r}) = 0"
        )
    for name, p in rates.items():
        rate_field(p, name)


def check_attention_dims(dim: int, window_size: int, num_heads: int) -> None:
    """A window attention's ``dim``, ``window_size`` and ``num_heads``: positive ints, heads dividing dim."""
    int_field(dim, "dim", 1)
    int_field(window_size, "window_size", 1)
    int_field(num_heads, "num_heads", 1)
    if dim % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide dim={dim}")


def check_block(dim: int, window_size: int, shift_size: int, mlp_ratio: float) -> None:
    """A block's shift (``0 <= shift < window``) and MLP width (at least 1)."""
    int_field(shift_size, "shift_size")
    if not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
    if int(dim * real_field(mlp_ratio, "mlp_ratio")) < 1:
        raise ValueError(f"mlp_ratio {mlp_ratio!r} gives a hidden width of 0 for dim {dim}")


def check_input(x: Any, channels: int, channels_name: str, axes: Tuple[str, ...]) -> None:
    """A model input ``(B, channels, *axes)``: a floating-point tensor of positive size; ``TypeError`` /
    ``ValueError`` naming what is wrong (``channels_name``: the model's argument, ``axes``: e.g. ``("H", "W")``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 + len(axes):
        raise ValueError(f"input must be (B, {channels}, {', '.join(axes)}), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"input has {x.shape[1]} channels, the model expects {channels_name}={channels}")
    if min(x.shape[2:]) < 1:
        what = "spatial" if len(axes) == 2 else "clip"
        raise ValueError(f"input {what} size must be positive, got {tuple(x.shape[2:])}")


# --------------------------------------------------------------------------- FLOPs and init


def attention_flops(N: int, dim: int, num_heads: int) -> int:
    """Multiply-accumulates of one window of ``N`` tokens: qkv, QK^T, PV, proj (the official count)."""
    C, h = dim, num_heads
    return N * C * 3 * C + h * N * (C // h) * N + h * N * N * (C // h) + N * C * C


def block_flops(block: nn.Module, H: int, W: int) -> int:
    """Multiply-accumulates of a block at an ``H x W`` map: two norms, the windows' attention, the MLP.

    The official convention: a map no larger than the window uses a window of its size.
    """
    ws = min(block.window_size, H, W)
    nW = H * W / ws / ws
    return int(
        block.dim * H * W
        + nW * block.attn.flops(ws * ws)
        + 2 * H * W * block.dim * block.dim * block.mlp_ratio
        + block.dim * H * W
    )


def init_weights(m: nn.Module) -> None:
    """The official initialisation: truncated-normal Linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- block and stage


class SwinBlock(nn.Module):
    """A block's shared fields and FLOP count; subclasses add the attention ``attn``, the norms and the MLP."""

    attn: nn.Module

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float) -> None:
        super().__init__()
        check_block(dim, window_size, shift_size, mlp_ratio)
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio

    def flops(self, H: int, W: int) -> int:
        return block_flops(self, H, W)


class SwinStage(nn.Module):
    """A stage's shared parts: the blocks (run under activation checkpointing when
    ``use_checkpoint`` and gradients are on), an optional ``downsample`` at its
    end, the FLOP count.  Subclasses build ``blocks`` and ``downsample`` and
    define ``forward_blocks(x, branch) -> (x, branch)``."""

    blocks: nn.ModuleList
    downsample: Optional[nn.Module]

    def __init__(self, dim: int, depth: int, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.use_checkpoint = use_checkpoint

    def per_block(self, drop_path: Union[float, Sequence[float]]) -> List[float]:
        """One stochastic-depth rate per block: ``drop_path`` itself if a list, else repeated."""
        return list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * self.depth

    @staticmethod
    def shift_of(i: int, window_size: int) -> int:
        """Block ``i``'s shift: even blocks unshifted, odd ones by half a window."""
        return 0 if i % 2 == 0 else window_size // 2

    def run_block(self, block: nn.Module, *args: Any) -> Any:
        """``block(*args)``, recomputed in the backward instead of kept when checkpointing."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward_blocks(
        self, x: torch.Tensor, branch: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, branch: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(x, branch)`` -> ``(x', branch')``: the stage's output is ``x' + branch'``.  With a
        downsample the pending branch goes into it (``downsample(x, branch)``) and ``branch'`` is ``None``.

        With the fused blocks, a large map in CPU inference runs a few images at a time
        (:func:`swin_ext.layers.chunking.inference_image_chunk`): the same values, written into
        the batch's outputs chunk by chunk."""
        chunk = inference_image_chunk(x, self)
        if not chunk or not any(getattr(m, "fused", False) is True for m in self.blocks.modules()):
            return self._forward_whole(x, branch)
        outs: List[Optional[torch.Tensor]] = []
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            part = self._forward_whole(x[rows], None if branch is None else branch[rows])
            if not outs:
                outs = [None if t is None else t.new_empty((x.shape[0], *t.shape[1:])) for t in part]
            for out, t in zip(outs, part):
                if out is not None:
                    out[rows] = t
        return outs[0], outs[1]

    def _forward_whole(
        self, x: torch.Tensor, branch: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        x, branch = self.forward_blocks(x, branch)
        if self.downsample is not None:
            return self.downsample(x, branch), None
        return x, branch

    def flops(self, H: int, W: int) -> int:
        f = sum(blk.flops(H, W) for blk in self.blocks)
        if self.downsample is not None:
            f += self.downsample.flops(H, W)
        return f


# --------------------------------------------------------------------------- model


class FusedBackend:
    """The backend switch every swin_ext model has (V1, V2, video): ``backend`` ``"fused"`` or
    ``"reference"``, and the CPU's oneDNN GEMM paths of the fused backend.  The model sets
    ``backend`` and ``_cpu_gemm_fusion`` (``True``) in its constructor."""

    backend: str
    _cpu_gemm_fusion: bool

    def set_backend(self, backend: str) -> "FusedBackend":
        """Switch every module to ``backend``: ``"fused"`` sets each module's fast-path
        flag (``fused``, ``Linear.fast``), ``"reference"`` clears them (plain PyTorch)."""
        check_backend(backend)
        self.backend = backend
        fused = backend == "fused"
        for m in self.modules():
            if isinstance(m, Linear):
                m.fast = fused and self._cpu_gemm_fusion
            elif m is not self and isinstance(getattr(m, "fused", None), bool):
                m.fused = fused
        return self

    def set_cpu_inference_fusion(self, enabled: bool) -> "FusedBackend":
        """Turn the CPU's fast GEMM paths of the fused backend on or off for this
        model: oneDNN's (fc1 + GELU in one GEMM in inference, oneDNN forward and
        input-gradient GEMMs for every block Linear) and swin_ext's own CPU GEMMs
        (and in inference the MLP as one op; see :mod:`swin_ext.layers.fast_linear`).
        On by default; kept across :meth:`set_backend`; the reference backend never
        uses them.  Process-wide swin_ext's are on for an AVX2 or AVX-512 CPU
        (:func:`swin_ext.layers.cpu_gemm_preferred`) unless ``SWIN_EXT_CPU_GEMM`` or
        :func:`swin_ext.layers.set_cpu_gemm` chooses, and oneDNN's only where chosen
        (``SWIN_EXT_ONEDNN_MLP``, :func:`swin_ext.layers.set_onednn`) or on an AVX-512
        CPU whose build lacks swin_ext's GEMMs (:func:`swin_ext.layers.onednn_preferred`)."""
        self._cpu_gemm_fusion = bool(enabled)
        return self.set_backend(self.backend)


class SwinBase(FusedBackend, nn.Module):
    """The model-level skeleton of Swin V1 and V2 (see the module docstring).

    ``forward(x (B, in_chans, H, W))`` -> logits ``(B, num_classes)``;
    ``forward_features(x)`` -> ``(B, ceil(H/32), ceil(W/32), num_features)``
    (for 4 stages and patch 4) after the final LayerNorm;
    ``forward_intermediates(x)`` -> the per-stage maps at strides 4, 8, 16, 32.

    A subclass's constructor calls :meth:`_setup` (the shared fields,
    checked), checks and stores its own, sets ``pos_drop`` and ``layers``
    (its stages), calls :meth:`_add_outputs` and initialises its weights.
    """

    #: substrings of parameter names that get no weight decay (:meth:`no_weight_decay_keywords`)
    NO_WEIGHT_DECAY: Tuple[str, ...] = ()

    layers: nn.ModuleList
    pos_drop: nn.Module
    norm: Optional[nn.LayerNorm]
    head_drop: Optional[nn.Module]
    head: Optional[nn.Module]

    def _setup(self, img_size: Union[int, Tuple[int, int]], patch_size: int, in_chans: int, num_classes: int,
               embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], mlp_ratio: float, backend: str,
               features_only: bool, out_indices: Sequence[int], **rates: float) -> None:
        """Check the shared fields (:func:`check_config`; ``rates``: the dropout rates by name), store
        them and build the patch embedding."""
        depths, num_heads = int_list_field(depths, "depths"), int_list_field(num_heads, "num_heads")
        img_size = to_2tuple(img_size, "img_size")
        check_config(img_size, patch_size, in_chans, num_classes, embed_dim, depths, num_heads, mlp_ratio, **rates)
        check_backend(backend)
        n = len(depths)
        if features_only:
            out_indices = normalize_indices(out_indices, n, "out_indices")
            num_classes = 0
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.mlp_ratio = mlp_ratio
        self.num_layers = n
        self.num_features = int(embed_dim * 2 ** (n - 1))
        self.backend = backend
        # The user's choice of set_cpu_inference_fusion, kept across set_backend.
        self._cpu_gemm_fusion = True
        self.features_only = bool(features_only)
        #: stages whose maps ``forward`` returns (features_only) -- all stages otherwise
        self.out_indices: Tuple[int, ...] = tuple(out_indices) if features_only else tuple(range(n))
        #: per stage: channels, stride w.r.t. the input, and the module producing it (timm's convention)
        self.feature_info: List[Dict[str, Any]] = feature_info(embed_dim, patch_size, n)
        #: timm's data configuration of the model (:func:`default_pretrained_cfg`); ``default_cfg`` is an alias
        self.pretrained_cfg: Dict[str, Any] = default_pretrained_cfg(img_size, in_chans, num_classes, patch_size, n)
        #: the head's pooling (:data:`GLOBAL_POOLS`), set by :meth:`reset_classifier`
        self.global_pool = "avg"
        #: stages :meth:`freeze_stages` froze (with the patch embedding; all of them: the final norm too)
        self.frozen_stages = 0
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)

    def _add_outputs(self, head_drop: float = 0.0) -> None:
        """The final norm and the head; on a ``features_only`` backbone instead one
        LayerNorm per output stage, keyed ``norm{i}`` (the official detection backbone)."""
        if self.features_only:
            for i in self.out_indices:
                self.add_module(f"norm{i}", nn.LayerNorm(self.feature_info[i]["num_chs"]))
            self.norm = None
            self.head_drop = None
            self.head = None
        else:
            self.norm = nn.LayerNorm(self.num_features)
            self.head_drop = nn.Dropout(head_drop) if head_drop > 0 else nn.Identity()
            self.head = nn.Linear(self.num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------- timm's model API

    @property
    def default_cfg(self) -> Dict[str, Any]:
        """timm's older name of :attr:`pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: Dict[str, Any]) -> None:
        self.pretrained_cfg = cfg

    @property
    def head_hidden_size(self) -> int:
        """Channels of the pooled features the head sees (timm's name; ``num_features`` for Swin)."""
        return self.num_features

    def no_weight_decay_keywords(self) -> Set[str]:
        """Substrings of the parameter names that get no weight decay (the official lists)."""
        return set(self.NO_WEIGHT_DECAY)

    def no_weight_decay(self) -> Set[str]:
        """Names of the parameters kept out of weight decay besides the 1-d ones (timm's hook, read by
        ``timm.optim.create_optimizer_v2``): the relative-position bias tables (V1), the continuous
        position bias MLPs and logit scales (V2) -- the names timm's own Swin / Swin V2 return."""
        return {n for n, _ in self.named_parameters() if any(k in n for k in self.NO_WEIGHT_DECAY)}

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's parameter grouping: what ``timm.optim.param_groups_layer_decay`` (``create_optimizer_v2(...,
        layer_decay=...)``) and ``timm.models.group_parameters`` read.

        The groups are timm's own Swin's, parameter by parameter: the patch
        embedding; then one group per block (``coarse``: per stage), the final
        norm with the last block; the head after them.  timm keeps stage i's
        patch merging at the start of stage i + 1 and groups it with that
        stage's first block (``coarse``: with that stage); here it is
        ``layers.i.downsample``, at the end of stage i (the official layout).
        The ordinals put it there anyway: it sorts after stage i's blocks
        (``_AFTER_BLOCKS``) and stage i + 1's first block (``coarse``: all of
        stage i + 1) joins its group (timm's "same group as the previous one"
        ordinal), so every parameter gets the lr scale timm's model gives it.
        """
        if coarse:
            blocks = [
                (r"^layers\.(\d+)\.downsample(?:\.|$)", (_AFTER_BLOCKS,)),
                (r"^layers\.([1-9]\d*)(?:\.|$)", (0, _MATCH_PREV)),
                (r"^layers\.(\d+)(?:\.|$)", None),
            ]
        else:
            blocks = [
                (r"^layers\.(\d+)\.downsample(?:\.|$)", (_AFTER_BLOCKS,)),
                (r"^layers\.([1-9]\d*)\.blocks\.0(?:\.|$)", (0, _MATCH_PREV)),
                (r"^layers\.(\d+)\.blocks\.(\d+)(?:\.|$)", None),
                (r"^norm(?:\.|$)", (_MATCH_PREV,)),
            ]
        return {"stem": r"^patch_embed(?:\.|$)", "blocks": blocks}

    def _classifier_model(self, what: str) -> None:
        if self.features_only:
            raise RuntimeError(f"{what}: a features_only model has no head")

    def get_classifier(self) -> nn.Module:
        """The classification layer: ``head`` (an ``nn.Linear``, or ``nn.Identity`` with 0 classes)."""
        self._classifier_model("get_classifier")
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised head of ``num_classes`` (0: none, ``forward`` returns the pooled
        features) on the model's device and dtype; ``global_pool`` (one of :data:`GLOBAL_POOLS`) also
        changes the pooling, ``None`` keeps it.  timm's signature."""
        self._classifier_model("reset_classifier")
        int_field(num_classes, "num_classes", 0)
        if global_pool is not None and global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        ref = self.norm.weight
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes)
            init_weights(head)
            head = head.to(device=ref.device, dtype=ref.dtype)
        self.head = head
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool

    def freeze_stages(self, num_stages: int) -> "SwinBase":
        """Freeze the patch embedding and the first ``num_stages`` stages, each with the patch merging
        that ends it (0: nothing; all of them: the final norm too, so that only the head trains -- a
        linear probe).  Frozen parameters get ``requires_grad=False`` and the frozen modules stay in
        eval mode (no dropout, no stochastic depth) when the model trains, as mmdetection's
        ``frozen_stages``.  Cannot be undone on the same model."""
        int_field(num_stages, "num_stages", 0, self.num_layers)
        if num_stages < self.frozen_stages:
            raise ValueError(f"stages 0-{self.frozen_stages - 1} are frozen already; freezing cannot be undone")
        self.frozen_stages = num_stages
        for m in self._frozen_modules():
            m.requires_grad_(False)
        return self.train(self.training)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages == 0:
            return []
        mods = [self.patch_embed, self.pos_drop, *self.layers[: self.frozen_stages]]
        if self.frozen_stages == self.num_layers and self.norm is not None:
            mods.append(self.norm)
        return mods

    def train(self, mode: bool = True) -> "SwinBase":
        """As ``nn.Module.train``; the stages :meth:`freeze_stages` froze stay in eval mode."""
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> "SwinBase":
        """Recompute each block in the backward instead of keeping its activations (timm's name)."""
        for layer in self.layers:
            layer.use_checkpoint = bool(enable)
        return self

    # ----------------------------------------------------------------- forward

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.in_chans, "in_chans", ("H", "W"))

    @property
    def out_channels(self) -> List[int]:
        """Channels of the maps ``forward`` returns when ``features_only`` (of every stage otherwise)."""
        return [self.feature_info[i]["num_chs"] for i in self.out_indices]

    def _norm(
        self, norm: nn.LayerNorm, x: torch.Tensor, branch: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x + branch, norm(x + branch))``, the pending add fused with the norm on the fused backend."""
        return add_layernorm(x, branch, norm, self.backend == "fused")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, H', W', num_features)`` after the final norm.

        With ``features_only`` there is no final norm: the last stage's map is
        returned as it is.
        """
        self._check_input(x)
        x, branch = self.pos_drop(self.patch_embed(x)), None
        for layer in self.layers:
            x, branch = layer(x, branch)
        if self.norm is None:
            return residual_add(x, branch)
        return self._norm(self.norm, x, branch)[1]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Union[int, Sequence[int], None] = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        *,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Per-stage feature maps, as timm's ``forward_intermediates``.

        Stage ``i`` (before its patch merging) has stride ``patch_size * 2**i``
        (4, 8, 16, 32): ``(B, C_i, ceil(H/s), ceil(W/s))`` for ``output_fmt="NCHW"``,
        ``(B, ceil(H/s), ceil(W/s), C_i)`` for ``"NHWC"``.

        ``indices``: ``None`` all stages, an int ``n`` the last ``n``, a sequence
        those stages.  ``norm``: apply the final norm to the last stage's map
        (timm's convention); on a ``features_only`` model, apply each stage's
        output norm ``norm{i}``.  ``stop_early``: skip the stages after the last
        one asked for.  Returns ``(final, intermediates)`` where ``final`` is
        ``forward_features(x)`` (NHWC; un-normed if the last stage did not run),
        or only the list when ``intermediates_only``.
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        take = normalize_indices(indices, self.num_layers, "indices")
        self._check_input(x)
        last = take[-1] if (stop_early or intermediates_only) else self.num_layers - 1
        x, branch = self.pos_drop(self.patch_embed(x)), None
        final: Optional[torch.Tensor] = None
        intermediates: List[torch.Tensor] = []
        for i in range(last + 1):
            layer = self.layers[i]
            x, branch = layer.forward_blocks(x, branch)
            wanted = i in take
            if i == self.num_layers - 1 and self.norm is not None and (not intermediates_only or (norm and wanted)):
                # the final norm, fused with the last residual add, as in forward_features
                (x, final), branch = self._norm(self.norm, x, branch), None
            if wanted:
                if norm and self.features_only:
                    if i not in self.out_indices:
                        raise ValueError(f"norm=True: stage {i} has no output norm (out_indices={self.out_indices})")
                    (x, y), branch = self._norm(getattr(self, f"norm{i}"), x, branch), None
                elif norm and final is not None:
                    y = final  # timm's convention: the final norm applies to the last stage only
                else:
                    x, branch = residual_add(x, branch), None
                    y = x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
            if i < last and layer.downsample is not None:
                x, branch = layer.downsample(x, branch), None
        if intermediates_only:
            return intermediates
        return (final if final is not None else residual_add(x, branch)), intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, H, W, C)`` -> logits ``(B, num_classes)``, or with ``pre_logits`` the pooled ``(B, C)``
        (timm's signature).  The pooling is :attr:`global_pool`; with ``""`` nothing is pooled and the
        result keeps the map, ``(B, H, W, num_classes)`` / ``(B, H, W, C)``."""
        self._classifier_model("forward_head")
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        elif self.global_pool == "max":
            x = x.amax(dim=(1, 2))
        elif self.global_pool == "avgmax":
            x = 0.5 * (x.mean(dim=(1, 2)) + x.amax(dim=(1, 2)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Logits ``(B, num_classes)``; with ``features_only``, the list of
        ``(B, C_i, ceil(H/s_i), ceil(W/s_i))`` maps of ``out_indices``, each
        through its LayerNorm ``norm{i}``."""
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, norm=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    def flops(self) -> int:
        """Multiply-accumulates at ``img_size`` (the official convention, labelled FLOPs there)."""
        H, W = self.img_size
        f = self.patch_embed.flops(H, W)
        h, w = H // self.patch_size, W // self.patch_size
        res = (h, w)
        for layer in self.layers:
            f += layer.flops(*res)
            res = (res[0] // 2, res[1] // 2)
        if self.norm is not None:
            f += self.num_features * h * w // (2**self.num_layers)
        f += self.num_features * self.num_classes
        return int(f)
