"""The answer a snapshot serves, chosen on held-out data (`evaluate.mode: auto`).

The candidates are every classifier mode the model has and retrieval and place retrieval at
every setting of `evaluate.auto` (neighbours x within_top_cells). The one with the lowest
median km on photos no model of it saw wins: cross-validated (geoloc.crossval) where the
served model is the head on the features stage's features that cross-validation re-fits per
fold, on the validation split otherwise. Nothing here reads the test split, which stays for
reporting the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoloc.choices import RETRIEVAL_MODES
from geoloc.geo import haversine_km
from geoloc.inference import Outputs, Recipe
from geoloc.params import AutoParams

CROSSVAL, VALIDATION = "crossval", "validation"   # what a choice was made on


@dataclass(frozen=True)
class Answer:
    """A way to answer: a mode and, for the retrieval modes, their two settings."""
    mode: str
    neighbours: int = 0
    within_top_cells: int = 0

    @property
    def name(self) -> str:
        """`argmax`, ..., `retrieval_k10_all`, `place_k10_top5`: a metric key DVC keeps
        flat."""
        if self.mode not in RETRIEVAL_MODES:
            return self.mode
        among = "all" if self.within_top_cells == 0 else f"top{self.within_top_cells}"
        return f"{self.mode}_k{self.neighbours}_{among}"


def candidates(modes: tuple[str, ...], cfg: AutoParams) -> list[Answer]:
    """The answers `auto` chooses among, for a model whose outputs allow `modes`."""
    answers = [Answer(mode) for mode in modes if mode not in RETRIEVAL_MODES]
    answers += [Answer(mode, k, cells) for mode in modes if mode in RETRIEVAL_MODES
                for k in cfg.neighbours for cells in cfg.within_top_cells]
    return answers


def answer_points(recipe: Recipe, answer: Answer, outputs: Outputs,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, lat, lon) per row of `outputs` under `answer`."""
    if answer.mode in RETRIEVAL_MODES:
        return recipe.points(answer.mode, outputs, answer.neighbours, answer.within_top_cells)
    return recipe.points(answer.mode, outputs)


def answer_errors(recipe: Recipe, answers: list[Answer], outputs: Outputs,
                  ) -> dict[str, np.ndarray]:
    """Each answer's error in km per row of `outputs` (whose rows hold the truth)."""
    lat, lon = outputs.rows["lat"].to_numpy(), outputs.rows["lon"].to_numpy()
    return {answer.name: haversine_km(lat, lon, *answer_points(recipe, answer, outputs)[1:])
            for answer in answers}


def choose(answers: list[Answer], medians: dict[str, float]) -> Answer:
    """The answer with the lowest median km; a tie goes to the earlier candidate (a classifier
    mode before retrieval, fewer neighbours first)."""
    return min(answers, key=lambda answer: medians[answer.name])
