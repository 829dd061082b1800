"""The HTTP API's response bodies as pydantic models (they become the OpenAPI schema FastAPI serves
at ``/openapi.json``). Coordinates are pixels of the uploaded image *as displayed* (EXIF orientation
applied): ``x`` to the right, ``y`` down, pixel-centre convention (``docs/architecture.md``)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CountResponse", "ErrorResponse", "HealthResponse", "ModelCardResponse", "ModelInfo", "QueueState",
           "RegionOut"]


class ModelInfo(BaseModel):
    """Which model answered."""

    name: str = Field(description="checkpoint file stem (e.g. 'last' for last.pt)")
    variant: Literal["regression", "localization"]
    backbone: str | None = Field(description="e.g. 'vgg16', 'efficientnet_lite0'; None when not recorded")
    method: str | None = Field(default=None, description="'autoscale' (two passes + L2S) or 'fpn' (single pass)")


class RegionOut(BaseModel):
    """One dense region the second pass re-counted (paper Sec. 3.4)."""

    box: tuple[float, float, float, float] = Field(description="[x, y, w, h] in input-image pixels")
    scale: float = Field(description="zoom factor the region was re-counted at")
    count_before: float = Field(description="first-pass count inside the box")
    count_after: float = Field(description="second-pass count inside the box")


class CountResponse(BaseModel):
    """``POST /v1/count``: the count, head positions and refined regions of one image."""

    count: float = Field(description="people in the image (two-pass AutoScale count)")
    first_pass_count: float = Field(description="count of the first pass alone (the FPN baseline)")
    width: int = Field(description="width of the image as displayed (EXIF orientation applied), pixels")
    height: int = Field(description="height of the image as displayed, pixels")
    points: list[tuple[float, float]] = Field(
        description="head positions [x, y] in input-image pixels (localization models; empty for regression)")
    regions: list[RegionOut]
    model: ModelInfo
    elapsed_ms: float = Field(description="server time for this request (upload, queue wait and counting), ms")
    overlay: str | None = Field(
        default=None, description="with ?overlay=inline: the overlay picture as a data:image/jpeg;base64 URL "
                                  "(longer side at most 1280 px), else null")


class ErrorResponse(BaseModel):
    """Every error: a short machine-readable ``error`` and a human ``detail`` (never a traceback)."""

    error: str = Field(description="e.g. 'unauthorized', 'payload_too_large', 'too_many_pixels', "
                                   "'unsupported_media_type', 'invalid_image', 'queue_full'")
    detail: str


class QueueState(BaseModel):
    pending: int = Field(description="requests waiting or being counted now")
    capacity: int = Field(description="most requests admitted at once; more get 503")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    queue: QueueState


class ModelCardResponse(BaseModel):
    """``GET /v1/model``: the checkpoint's model card (``<name>.json`` beside it, written by
    ``autoscale train``) or, without one, what the checkpoint header says. Server paths are reduced
    to file names."""

    model_config = ConfigDict(extra="allow")

    source: Literal["model card", "checkpoint header"]
    checkpoint: str = Field(description="checkpoint file name")
    variant: Literal["regression", "localization"]
    method: str | None = None
    backbone: str | None = None
    model: dict[str, Any] = Field(description="registry name and keyword arguments of the counting network")
