"""The web page of `vilbert serve`: upload an image, ask a question or type an expression, and see
the answers, the chosen box and the co-attention over the image.

One Flask app over the public inference API (`vilbert.inference`); the page is static HTML with a
little JavaScript that posts the form to /api/predict and writes the JSON it gets back into the
page. Flask is the extra `vilbert[serve]`.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vilbert.inference import VQA, Explainer, Grounding, Predictor
from vilbert.viz.attention import co_attention_figure
from vilbert.viz.boxes import boxed

PAGE = Path(__file__).with_name("page.html")
MAX_UPLOAD = 20 << 20  # bytes: a photo, not a dataset


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure_png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Service:
    """What the page can do with one model: answer (a VQA head), locate (a region_score head),
    and always show the co-attention."""

    def __init__(self, predictor: Predictor) -> None:
        model, regions = predictor.model, predictor.regions
        self.vqa = VQA(model, regions, predictor.max_regions) if "vqa" in model.heads else None
        self.grounding = Grounding(model, regions, predictor.max_regions) if "region_score" in model.heads else None
        self.explainer = Explainer(model, regions, predictor.max_regions)

    @property
    def modes(self) -> list[str]:
        return [m for m, ok in (("question", self.vqa), ("expression", self.grounding)) if ok is not None]

    def predict(self, image: Image.Image, text: str, mode: str, top_k: int = 5) -> dict[str, Any]:
        if mode not in self.modes:
            raise ValueError(f"this model answers {' and '.join(self.modes) or 'nothing'}, not {mode!r}")
        if not text.strip():
            raise ValueError("type a question or an expression")
        image = image.convert("RGB")
        regions = self.explainer.region_list([image])[0]
        out: dict[str, Any] = {"mode": mode, "text": text}
        if mode == "question":
            out["answers"] = [{"answer": a.answer, "score": round(a.score, 4)}
                              for a in self.vqa.answer(regions, text, top_k)]
        else:
            found = self.grounding.locate(regions, text)
            out["box"] = [round(v, 1) for v in found.box]
            out["score"] = round(found.score, 4)
            out["boxed"] = _png(boxed(image, list(found.box), f"{text}: {found.score:.2f}"))
        maps = self.explainer.attention(regions, text)
        out["attention"] = _figure_png(co_attention_figure(image, maps, title=f'"{text}"'))
        return out


def create_app(predictor: Predictor):
    """The Flask app serving the page and /api/predict for `predictor`'s model."""
    from flask import Flask, jsonify, request  # the extra vilbert[serve]

    service = Service(predictor)
    app = Flask("vilbert")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD

    @app.get("/")
    def page():
        return PAGE.read_text().replace("{{MODES}}", ",".join(service.modes)), 200, {"Content-Type": "text/html"}

    @app.post("/api/predict")
    def predict():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(error="choose an image"), 400
        try:
            image = Image.open(io.BytesIO(upload.read()))
            image.load()
        except (UnidentifiedImageError, OSError) as err:
            return jsonify(error=f"{upload.filename}: not an image PIL can read ({err})"), 400
        try:
            return jsonify(service.predict(image, request.form.get("text", ""), request.form.get("mode", "question")))
        except ValueError as err:
            return jsonify(error=str(err)), 400

    return app
