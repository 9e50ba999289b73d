"""The model card shipped in the export snapshot: what the model is, what it learnt from, how
well it does, what it is for and where it fails (after Mitchell et al., "Model Cards for Model
Reporting", 2019)."""

from __future__ import annotations

# What each source's images allow, and the credit they ask for.
LICENCES = {
    "synthetic": "Rendered by the project's embedded synthetic world (geoloc/sources/"
                 "synthetic.py): no photographs, no people, no licence terms.",
    "mapillary": "Mapillary images, CC BY-SA 4.0. Attribution per image (creator, image id, "
                 "link) is in data/raw/<batch>/attribution.csv: credit \"Photos from "
                 "Mapillary, CC BY-SA, by @username\" with a link to the image, and share "
                 "derived images alike.",
    "local": "The user's own photographs: their licence is the user's to state.",
}


def model_card(params: dict, trained: dict, evaluation: dict, data: dict, export: dict,
               spec: dict) -> str:
    """Markdown for MODEL_CARD.md, from the training params and summary (the checkpoint's:
    `fit`'s figures, with the device and precision it trained in), metrics/eval.json,
    metrics/data.json, the export's parity figures and `spec`: models/recipe.json (the mode and
    the recipe's settings) and, when the index ships, its `retrieval` description."""
    model, loss = params["model"], params["loss"]
    index, split = params["index"], params["split"]
    source = params["fetch"]["source"]
    resolutions = f"{index['coarsest_resolution']} to {index['finest_resolution']}"
    weights = "ImageNet-pretrained" if model["pretrained"] else "random init"
    hybrid = " with offset regression (hybrid)" if model["hybrid"] else ""
    frozen = (f" frozen, a head trained on its features at {params['features']['size']} px"
              if model["freeze_backbone"] else "")
    return f"""# Model card: geo-locate-ml

## Model
- Task: predict where in France a street-level photo was taken, as one of {data['cells']}
  adaptive H3 cells (resolutions {resolutions}); the answer is the cell's representative point
  (the mean position of its training photos).
- Architecture: `{model['arch']}` ({weights}{frozen}), `{model['head']}` head{hybrid}, loss
  `{loss['name']}`; trained on {trained.get('device', 'a device not recorded')} in
  {trained.get('precision', 'a precision not recorded')} (train.precision
  `{params['train']['precision']}`).
- The answer's default mode is `{spec['mode']}`, the one evaluated below{_chosen(spec)}; the
  snapshot serves every mode evaluate scored, with the same functions and temperatures.
- Input: one RGB photo, resized and centre-cropped to {export['image_size']} px (model.json);
  output: a probability per cell (softmax of logits / temperature, temperature
  {evaluation.get('temperature', 1.0):.3g} fitted on the validation split).
- Files: model.onnx (ONNX Runtime, opset {params['export']['opset']}), model.ts (TorchScript),
  cells.json, model.json, params.json (every param it was trained with), metrics.json.
{_retrieval_section(spec, evaluation)}
## Training data
- Source: `{source}`. {LICENCES[source]}
- {data['images']:,} images of {data['cities']} cities in {data['batches']} batches.
- Split by `{split['protocol']}` (no drive, and no drive uploaded in two parts, in two
  splits); validation and test follow the same rule.

## Evaluation (test split, {evaluation['images']} images, {evaluation['sequences']} sequences)
- Median error {evaluation['median_km']:.3g} km (95% interval over sequences
  {evaluation['median_km_ci_low']:.3g} to {evaluation['median_km_ci_high']:.3g}), p90
  {evaluation['p90_km']:.3g} km ({evaluation['p90_km_ci_low']:.3g} to
  {evaluation['p90_km_ci_high']:.3g}), p95 {evaluation['p95_km']:.3g} km; within 1 km
  {evaluation['within_1km']:.3f}, within 25 km {evaluation['within_25km']:.3f}; in the wrong
  region (beyond 200 km) {evaluation['far_200km']:.3f}, beyond 500 km
  {evaluation['far_500km']:.3f}. The classifier puts {evaluation['accuracy']:.3f} of the
  photos in their true cell.
- For reference: a perfect cell classifier would score a median of
  {evaluation['floor_median_km']:.3g} km (the floor); always answering the most frequent cell,
  {evaluation['baseline_median_km']:.3g} km.
- Exported models agree with PyTorch on the top cell for
  {100 * export['onnx_top1_agreement']:.2f}% (ONNX) and
  {100 * export['torchscript_top1_agreement']:.2f}% (TorchScript) of {export['parity_images']}
  test images.

## Intended use
Research and teaching on image geolocation; placing one's own street photos on a map of France;
comparing methods under a leakage-free protocol.

## Limits
- France only, and only where the training data has photos: a photo from elsewhere still gets
  a French cell, with no warning beyond a low confidence.
- The answer is a cell's point, so even a right cell is off by the distance to that point
  (the floor above); the error distribution is heavy-tailed (p90 far above the median).
- Figures measured on the synthetic world say nothing about real photos; measure on data from
  the source you will use.
- Coverage is uneven (drives gather in popular places), and so is accuracy: see
  plots/eval/cities.csv and the error map.
- Not for locating people or private places: it must not be used to track anyone.
"""


def _retrieval_section(spec: dict, evaluation: dict) -> str:
    """What the feature index is, and what it gives away."""
    if "retrieval" not in spec:
        return ("- No feature index: this snapshot was exported with export.retrieval_index "
                "false, so it does not answer in the retrieval and place modes and holds no "
                "training photo's position.")
    retrieval = spec["retrieval"]
    nearest = ""
    if "nearest_photo_median_km" in evaluation:
        nearest = (f" On the test split, the single nearest training photo alone is off by a "
                   f"median {evaluation['nearest_photo_median_km']:.3g} km (p90 "
                   f"{evaluation['nearest_photo_p90_km']:.3g} km).")
    return f"""- features.onnx and retrieval.npz: the retrieval and place modes. features.onnx
  computes a photo's features ({retrieval['image_size']} px), retrieval.npz holds those of the
  training photos (their principal components) and which place each was taken from, and
  answers with the medoid of the positions of the {spec['recipe']['neighbours']} most similar
  photos (for the views of one place together, places) {_within(spec['recipe'])}.{nearest}

## The feature index holds the training photos' positions
retrieval.npz stores the position (latitude, longitude) of every training photo,
{retrieval['photos']:,} of them: whoever has this snapshot can read where they were taken. For a
user's own photos that is where the user has been; for licensed data (Mapillary's are CC BY-SA)
the positions are part of what the licence covers. Export with `export.retrieval_index: false`
to leave the index out (the retrieval and place modes are then not served)."""


def _within(recipe: dict) -> str:
    cells = recipe["within_top_cells"]
    return f"among those of the {cells} likeliest cells" if cells else "among all"


def _chosen(spec: dict) -> str:
    """How the mode was chosen, where `evaluate.mode: auto` chose it (a recipe written before
    auto existed has no `choice`)."""
    choice = spec.get("choice", {})
    if choice.get("chosen_by") in (None, "params"):
        return ""
    on = ("under cross-validation by drive" if choice["chosen_by"] == "crossval"
          else "on the validation split")
    return (f", chosen as `{choice['answer']}` for the lowest held-out median "
            f"({choice['held_out_median_km']:.3g} km {on})")
