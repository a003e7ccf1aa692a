"""Reading real images into the item format: uint8 (3, S, S), shorter side resized then centre-cropped."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class InputDataError(ValueError):
    """Input data that cannot be read, found while training or evaluating reads it (a corrupt image
    body behind a good header, shards with too many unreadable samples): the same data would fail the
    same way again, so a run stops at once and is never retried. The message names the file and row."""

    @property
    def reason(self) -> str:
        """The one line naming file and row; for an error a DataLoader worker raised, torch re-raises it
        as "Caught InputDataError in DataLoader worker process N." + the worker's traceback: its own line."""
        lines = str(self).strip().splitlines()
        if lines and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
            # the traceback's last line: "trainers.data.images.InputDataError: <message>"
            raised = [match[1] for line in lines if (match := _RAISED_LINE.match(line))]
            if raised:
                return raised[-1]
        return lines[0] if lines else type(self).__name__


_RAISED_LINE = re.compile(rf"^(?:[\w.]+\.)?{InputDataError.__name__}: (.*)$")


def square_resize(image: torch.Tensor, image_size: int) -> torch.Tensor:
    image = F.resize(image, image_size, antialias=True)
    return F.center_crop(image, [image_size, image_size])


_TO_TENSOR = v2.PILToTensor()


def pil_to_uint8(image: Image.Image, image_size: int) -> torch.Tensor:
    return square_resize(_TO_TENSOR(image.convert("RGB")), image_size)


def decode_image_bytes(payload: bytes, image_size: int) -> torch.Tensor:
    """Raises ValueError on bytes that are not an image (the caller names where they came from)."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            return pil_to_uint8(image, image_size)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({exc})") from None


def load_image(path: Path, image_size: int, where: str) -> torch.Tensor:
    """`where` names the annotation that pointed here (file and row), for the error message."""
    if not path.is_file():
        raise InputDataError(f"{where}: image file {path} does not exist")
    try:
        with Image.open(path) as image:
            return pil_to_uint8(image, image_size)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputDataError(f"{where}: cannot read image {path} ({exc})") from None


def check_image_file(path: Path, where: str, read_header: bool = True) -> None:
    """Before training: the file exists and (read_header) PIL recognises its header; cheap, no decode."""
    if not path.is_file():
        raise ValueError(f"{where}: image file {path} does not exist")
    if read_header:
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"{where}: cannot read image {path} ({exc})") from None


def resolve(path: str, root: str | Path | None) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() or root is None else Path(root) / candidate


def read_json_file(path: Path) -> object:
    """The parsed JSON document at `path`; a syntax error is one line naming the file and line."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_json_annotations(path: str | Path, required: tuple[str, ...], limit: int | None = None) -> list[dict]:
    """A JSON list of annotation dicts, each with the `required` keys; errors name file and entry."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such annotation file")
    entries = read_json_file(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of annotations")
    for row, entry in enumerate(entries):
        missing = [key for key in required if key not in entry]
        if missing:
            raise ValueError(f"{path}: entry {row} lacks {', '.join(missing)}")
    return entries[:limit] if limit else entries
