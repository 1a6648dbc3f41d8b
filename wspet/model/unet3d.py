"""The paper's network: a 3D U-Net with a quarter of U-Net's feature maps, SELU inside, sigmoid out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn


ACTIVATIONS = {"selu": nn.SELU, "leaky_relu": nn.LeakyReLU}
NORMS = ("none", "instance")


def _conv_block(in_channels: int, out_channels: int, norm: str, activation: str) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)]
    if norm == "instance":
        layers.append(nn.InstanceNorm3d(out_channels, affine=True))
    act = ACTIVATIONS[activation]
    layers.append(act(inplace=True) if activation == "selu" else act(0.01, inplace=True))
    return layers


def _double_conv(in_channels: int, out_channels: int, norm: str = "none", activation: str = "selu") -> nn.Sequential:
    """Two 3x3x3 convolutions, each with its normalisation and activation: the unit of every U-Net level."""
    return nn.Sequential(
        *_conv_block(in_channels, out_channels, norm, activation),
        *_conv_block(out_channels, out_channels, norm, activation),
    )


class UNet3D(nn.Module):
    """3D U-Net (Ronneberger et al. 2015 made 3D, features divided by 4 as in Afshari et al. 2019).

    Args:
        in_channels: channels of the input volume (1 for PET).
        features: feature maps per level, from the top; the paper's are (16, 32, 64, 128, 256).
            The depth is ``len(features)``: each spatial size must be divisible by
            ``2 ** (len(features) - 1)``.
        norm: ``none`` (the paper: SELU self-normalises) or ``instance`` (instance norm after each
            convolution, as nnU-Net).
        activation: ``selu`` (the paper) or ``leaky_relu`` (slope 0.01, as nnU-Net).
        deep_supervision: give every decoder level between the top and the coarsest a 1x1x1 head
            of its own (``len(features) - 3`` heads; none for three levels or fewer), so that the
            loss is applied at their coarser scales too: nnU-Net's deep supervision, whose
            coarsest output has weight 0 (:mod:`wspet.losses.deep_supervision`). ``False``: the
            paper. Prediction uses the top head alone.

    ``forward`` takes ``x`` of shape ``(B, in_channels, D, H, W)`` and returns logits of shape
    ``(B, 1, D, H, W)``; :meth:`probabilities` applies the paper's sigmoid output layer, in
    float32 even under bf16 autocast, because the losses saturate and lose their gradient
    when the sigmoid is rounded to bf16. :meth:`multiscale_logits` also returns the lower heads'
    logits, ``(B, 1, D / 2**s, H / 2**s, W / 2**s)`` for ``s = 1, 2, ...`` (one per auxiliary head).
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        norm: str = "none",
        activation: str = "selu",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        features = [int(f) for f in features]
        if len(features) < 2 or any(f <= 0 for f in features):
            raise ValueError(f"features must hold at least two positive widths, got {features}")
        if in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r} is not one of {NORMS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {tuple(ACTIVATIONS)}")
        if not isinstance(deep_supervision, bool):
            raise ValueError(f"deep_supervision must be true or false, got {deep_supervision!r}")
        self.norm, self.activation = norm, activation
        self.in_channels = in_channels
        self.features = tuple(features)
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoders.append(_double_conv(channels, width, norm, activation))
            channels = width
        self.pool = nn.MaxPool3d(2)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(features[:-1]):
            self.upsamplers.append(nn.ConvTranspose3d(channels, width, kernel_size=2, stride=2))
            self.decoders.append(_double_conv(2 * width, width, norm, activation))
            channels = width
        self.head = nn.Conv3d(channels, 1, kernel_size=1)
        # Heads on the decoder levels below the top but the coarsest, finest first: scales 1/2, 1/4, ...
        self.deep_supervision = deep_supervision
        self.auxiliary_heads = nn.ModuleList(
            nn.Conv3d(width, 1, kernel_size=1) for width in (features[1:-2] if deep_supervision else [])
        )
        self._init_weights()

    @property
    def divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** (len(self.features) - 1)

    def _init_weights(self) -> None:
        # SELU self-normalises only with LeCun-normal weights (Klambauer et al. 2017); leaky ReLU
        # keeps activations' variance with He weights of its slope (nnU-Net's init).
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                if self.activation == "selu":
                    nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                else:
                    nn.init.kaiming_normal_(module.weight, a=0.01, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, D, H, W)`` for input ``(B, in_channels, D, H, W)``."""
        for level in self._decoded(x):  # each coarser level freed as the next one is made
            pass
        return self.head(level)

    def multiscale_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of the top head, then of each auxiliary head: ``(B, 1, D / 2**s, H / 2**s, W / 2**s)``
        for ``s = 0 .. len(auxiliary_heads)``."""
        decoded = list(self._decoded(x))
        # decoded runs coarsest to finest; the auxiliary heads read the levels just below the top.
        below_top = decoded[-2::-1]
        return [self.head(decoded[-1])] + [head(level) for head, level in zip(self.auxiliary_heads, below_top)]

    def _decoded(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each decoder level's output, coarsest first; the last is at the input's size."""
        self._check_input(x)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        skips.pop()  # the bottom level feeds the decoder directly
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([skips.pop(), upsample(x)], dim=1))
            yield x

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities ``(B, 1, D, H, W)`` in float32."""
        return torch.sigmoid(self(x).float())

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet3D expects input (B, {self.in_channels}, D, H, W), got shape {tuple(x.shape)}"
            )
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(
                f"UNet3D input spatial size {tuple(x.shape[2:])} is not divisible by {self.divisor} "
                f"(2 ** (depth - 1) for features {self.features}); crop or pad the volume"
            )
