"""A smaller copy of a trained classifier to distill into: the teacher's config with fewer layers, initialised
from evenly spaced teacher layers, with the teacher's embeddings, pooler, classifier head and tokenizer.

Which layers: every (L/N)-th counting from the top, so the last layer is always kept (12 -> 6: 1,3,5,7,9,11).
DistilBERT took every other layer from the bottom (0,2,..,10) of a pretrained, not fine-tuned, model; here the
classifier head is copied from a fine-tuned teacher, and it was trained on the last layer's output, so the
student starts with the layer that produced what the head expects.
"""
from __future__ import annotations

import re
from pathlib import Path

from bertclf.errors import UserError

LAYER_KEY = re.compile(r"^(.*\.layers?\.)(\d+)\.(.+)$")  # encoder.layer.7.attention... (BERT, RoBERTa, ELECTRA)


def evenly_spaced(n_teacher: int, n_student: int) -> list[int]:
    """The teacher layers a student of n_student layers starts from: evenly spaced, the top one included."""
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def teacher_layer_count(config, where: str) -> int:
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise UserError(f"{where}: its config.json has no num_hidden_layers ({config.model_type} models are not "
                        f"supported by distill); use a BERT-like teacher (BERT, RoBERTa, XLM-R, ELECTRA)")
    return n


def check_layers(n_student: int, n_teacher: int, where: str) -> None:
    if not 1 <= n_student < n_teacher:
        raise UserError(f"--layers {n_student}: must be between 1 and {n_teacher - 1} ({where} has {n_teacher} "
                        f"layers; a student is smaller than its teacher)")


def student_state_dict(teacher_state: dict, chosen: list[int]) -> dict:
    """The teacher's weights renamed for the student: layer chosen[i] becomes layer i; the other layers are
    left out; everything outside the layers (embeddings, pooler, head) is kept as it is."""
    new_index = {t: s for s, t in enumerate(chosen)}
    out = {}
    for key, value in teacher_state.items():
        m = LAYER_KEY.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(2)) in new_index:
            out[f"{m.group(1)}{new_index[int(m.group(2))]}.{m.group(3)}"] = value
    return out


def make_student(teacher_dir: str | Path, n_layers: int, out_dir: str | Path) -> list[int]:
    """Write the student's initial model directory (config, weights, tokenizer) to out_dir, atomically;
    returns the teacher layers it started from."""
    import copy

    from transformers import AutoModelForSequenceClassification

    from bertclf.io.files import atomic_dir
    from bertclf.models.resolve import load_classifier, load_tokenizer

    teacher = load_classifier(str(teacher_dir))
    n_teacher = teacher_layer_count(teacher.config, str(teacher_dir))
    check_layers(n_layers, n_teacher, str(teacher_dir))
    chosen = evenly_spaced(n_teacher, n_layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = n_layers
    student = AutoModelForSequenceClassification.from_config(config)
    state = student_state_dict(teacher.state_dict(), chosen)
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:  # a layout the renaming does not know: say so rather than train random weights
        raise UserError(f"{teacher_dir}: cannot map its weights onto a {n_layers}-layer student ({len(missing)} "
                        f"missing, e.g. {(missing or unexpected)[0]}); this architecture is not supported by distill")
    with atomic_dir(out_dir) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(str(teacher_dir)).save_pretrained(tmp)
    return chosen
