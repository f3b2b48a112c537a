import numpy as np
import pytest
import torch
from PIL import Image

import convrnn
from convrnn.data.images import ImageError
from convrnn.neural.assembly import DIMS, load_assembly, model_features, save_assembly


@pytest.fixture(scope="module")
def model() -> convrnn.ConvRNN:
    torch.manual_seed(0)
    return convrnn.create_model("rgc_shallow", num_classes=10, image_size=32, width=0.125).eval()


def test_layout_and_values_match_features(model):
    x = torch.randn(5, 3, 32, 32)
    a = model_features(model, x, areas=["V4", "IT"], times=26, batch_size=2, stimulus_ids=list("abcde"))
    assert a.dims == DIMS
    assert a.sizes["presentation"] == 5 and a.sizes["time_bin"] == 26
    assert list(a.stimulus_id.values) == list("abcde")
    np.testing.assert_array_equal(a.time_bin_start.values, np.arange(26) * 10.0)
    np.testing.assert_array_equal(a.time_bin_end.values, np.arange(1, 27) * 10.0)
    assert set(a.region.values) == {"V4", "IT"}
    assert len(set(a.neuroid_id.values)) == a.sizes["neuroid"]
    with torch.no_grad():
        ref = model.features(x, areas=["IT"], times=[12], presentation="neural")["IT"][12]
    it = a.isel(neuroid=np.flatnonzero(a.region.values == "IT"), time_bin=12).values
    # Batches of 2 vs 5 images: float32 round-off differs between the two runs.
    np.testing.assert_allclose(it, ref.numpy(), rtol=1e-4, atol=1e-4)
    # Layer coordinate: each layer's units are contiguous and sized by the layer's output.
    for layer in model.area_layers("IT"):
        assert (a.layer.values == layer).sum() == np.prod(model.plans[layer].output_shape)


def test_netcdf_round_trip(model, tmp_path):
    a = model_features(model, torch.randn(3, 3, 32, 32), areas=["IT"], times=[5, 7])
    path = save_assembly(a, tmp_path / "sub" / "feats.nc")
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left behind
    b = load_assembly(path)
    assert b.dims == DIMS
    np.testing.assert_array_equal(b.values, a.values)
    for c in ("stimulus_id", "neuroid_id", "layer", "region"):
        assert list(b[c].values) == [str(v) for v in a[c].values]
    np.testing.assert_array_equal(b.time_bin_start.values, [50.0, 70.0])
    assert b.attrs["model"] == "rgc_shallow"


def test_image_folder_ids_are_file_stems(model, tmp_path):
    for name in ("b_img", "a_img"):
        Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    a = model_features(model, tmp_path, areas=["V4"], times=3)
    assert list(a.stimulus_id.values) == ["a_img", "b_img"]
    assert list(a.image_file_name.values) == ["a_img.png", "b_img.png"]


def test_bad_inputs(model, tmp_path):
    with pytest.raises(ImageError, match="no image files"):
        model_features(model, tmp_path, areas=["IT"])
    with pytest.raises(ImageError, match="not a folder"):
        model_features(model, tmp_path / "missing", areas=["IT"])
    with pytest.raises(KeyError, match="unknown area 'V9'"):
        model_features(model, torch.randn(1, 3, 32, 32), areas=["V9"])
    with pytest.raises(ValueError, match=r"stimulus_ids: 'a' occurs more than once"):
        model_features(model, torch.randn(2, 3, 32, 32), areas=["IT"], stimulus_ids=["a", "a"])
    with pytest.raises(ValueError, match="must be \\(N, C, H, W\\)"):
        model_features(model, torch.randn(3, 32, 32), areas=["IT"])
    (tmp_path / "bad.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match=r"cannot read .*bad\.nc"):
        load_assembly(tmp_path / "bad.nc")
