"""Fuzzing: any input to the COCO loader or the metric functions either works or raises the project's own error."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.forgetting import (MetricsError, backward_transfer, final_average, forgetting, forward_transfer,
                                   retention)
from evaluation.summary import derived_metrics
from tasks.coco import read_coco_json
from tasks.errors import DataError
import pytest

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=5))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)
ids = st.one_of(st.integers(0, 3), json_values)
image = st.fixed_dictionaries({"id": ids, "file_name": st.text(max_size=5),
                               "width": st.one_of(st.integers(-2, 64), scalars),
                               "height": st.one_of(st.integers(-2, 64), scalars)})
annotation = st.fixed_dictionaries({"id": ids, "image_id": ids, "category_id": ids,
                                    "bbox": st.one_of(st.lists(st.one_of(st.floats(-10, 80), scalars), max_size=5),
                                                      scalars)})
category = st.fixed_dictionaries({"id": ids, "name": st.one_of(st.text(), scalars)})
coco_like = st.one_of(json_values, st.fixed_dictionaries({"images": st.lists(image, max_size=3),
                                                          "annotations": st.lists(annotation, max_size=4),
                                                          "categories": st.lists(category, max_size=3)}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(coco_like)
def test_coco_loader_loads_or_raises_data_error(tmp_path, document):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    try:
        read_coco_json(path)
    except DataError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_coco_loader_survives_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "instances.json"
    path.write_bytes(data)
    try:
        read_coco_json(path)
    except DataError:
        pass


entries = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.text(max_size=3),
                    st.booleans())
matrices = st.one_of(st.lists(st.lists(entries, max_size=5), max_size=5), json_values)


@settings(max_examples=400, deadline=None)
@given(matrices, st.one_of(st.lists(entries, max_size=6), json_values))
def test_metric_functions_compute_or_raise_metrics_error(matrix, zero_shot):
    for fn, args in ((final_average, (matrix,)), (retention, (matrix,)), (forgetting, (matrix,)),
                     (backward_transfer, (matrix,)), (forward_transfer, (matrix, zero_shot))):
        try:
            fn(*args)
        except MetricsError:
            pass
    try:
        tasks = [f"t{i}" for i in range(len(matrix))] if isinstance(matrix, list) else []
        derived_metrics(tasks, matrix, zero_shot)
    except MetricsError:
        pass
