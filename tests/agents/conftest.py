"""Fixtures of the agent tests: the prompts, images, and a Reasoner over FakeModels
(tests.fakes.models, the one scripted test double)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from agents import AgentConfig, ModelSet, Reasoner
from agents.prompts import PromptSet
from models.types import ImageInput
from tests.fakes.models import Call, FakeModel

__all__ = ["Call", "FakeModel"]


@pytest.fixture(scope="session")
def prompts() -> PromptSet:
    return PromptSet.load()


@pytest.fixture
def image(shapes_image: Image.Image) -> ImageInput:
    return ImageInput(shapes_image)


@pytest.fixture
def image2(shapes_image: Image.Image) -> ImageInput:
    return ImageInput(shapes_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


@pytest.fixture(scope="session")
def prompt_sets() -> dict[str, PromptSet]:
    return PromptSet.load_sets()


@pytest.fixture
def make_reasoner(prompt_sets: dict[str, PromptSet]) -> Callable[..., Reasoner]:
    def make(vision: FakeModel, text: FakeModel | None = None, **config: object) -> Reasoner:
        return Reasoner(
            ModelSet(vision=vision, text=text), AgentConfig(**config), prompts=prompt_sets
        )

    return make
