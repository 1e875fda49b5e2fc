"""The ``saturation`` section of a spec (:class:`SaturationConfig`), apart from the
tracker (:mod:`labkit.measures.saturation`), so that reading a spec imports no torch."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TRAIN_PASS = "train"  # the name of the training pass in log columns and spectra

IdimRule = Literal["delve", "reach"]


class SaturationConfig(BaseModel):
    """The ``saturation`` section of a spec; part of the run's identity except ``delta``
    and ``idim_rule`` (read from the stored spectra)."""

    model_config = ConfigDict(extra="forbid")

    stats: list[Literal["lsat", "idim", "det", "trc", "dtrc"]] = Field(
        ["lsat", "idim"], min_length=1,
        description="statistics logged per layer and pass: lsat (saturation), idim "
                    "(intrinsic dimensionality), det / trc (determinant / trace of the "
                    "covariance), dtrc (sum of its non-negative eigenvalues)")
    delta: float = Field(
        0.99, gt=0.0, le=1.0,
        description="share of the variance the intrinsic dimensionality explains; not "
                    "part of run identity (recomputed from the stored eigenvalues); a list "
                    "is a grid axis")
    idim_rule: IdimRule = Field(
        "delve",
        description="how the intrinsic dimensionality is counted: delve = leading "
                    "eigenvalues whose cumulative share stays below delta (delve / "
                    "PHD-LAB, one less than reach); reach = smallest number of leading "
                    "directions whose share reaches delta; not part of run identity")
    conv_method: Literal["channelwise", "mean", "max", "flatten"] = Field(
        "channelwise",
        description="how a conv output (N, C, H, W) becomes data points: channelwise = "
                    "every pixel's C-vector (N*H*W rows of width C); mean / max = global "
                    "pooling (N rows of width C); flatten = N rows of width C*H*W")
    downsampling: int | None = Field(
        None, ge=1,
        description="resize conv outputs larger than this to downsampling x downsampling "
                    "(nearest neighbour, as PHD-LAB) before the reduction; null: full size")
    timeseries_method: Literal["last_timestep", "timestepwise"] = Field(
        "last_timestep",
        description="how an LSTM output (N, T, U) becomes data points: the last step's "
                    "U-vector, or all steps concatenated (width T*U)")
    layers: list[str] | None = Field(
        None,
        description="layer names to track, shell wildcards allowed (\"layer1-*\"); "
                    "null: every Conv2d, Linear and LSTM")
    splits: list[str] | None = Field(
        None,
        description="passes to track: \"train\" (the training pass) and eval split "
                    "names; null: all of them")
    max_samples: int | None = Field(
        None, ge=1,
        description="use only the first max_samples samples (images) of each pass per "
                    "layer; null: every sample")
