"""Face parsing: the ONNX adapter (a tiny model built here) and the builtin parser."""

import numpy as np
import pytest

from data_prep import parsing



def _tiny_model(path, order, nhwc=False, labels_out=False, size=None):
  """A 1x1 convolution: class scores = W . rgb, so red/green/blue pixels get chosen classes."""
  import onnx
  from onnx import TensorProto, helper, numpy_helper
  wts = np.zeros((19, 3, 1, 1), np.float32)
  # model class ids in `order`: red -> skin, green -> hair, blue -> cloth, grey -> background
  for name, col in (("skin", 0), ("hair", 1), ("cloth", 2)):
    wts[order.index(name), col, 0, 0] = 4.0
  bias = np.zeros(19, np.float32)
  bias[order.index("background")] = 3.0  # grey (0.5, 0.5, 0.5) scores 2 elsewhere
  dims = ["N", size or "H", size or "W"]
  x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, dims[1], dims[2]] if not nhwc
                                    else [1, dims[1], dims[2], 3])
  nodes, inp = [], "image"
  if nhwc:
    nodes.append(helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2]))
    inp = "chw"
  nodes.append(helper.make_node("Conv", [inp, "w", "b"], ["logits"]))
  outs = "logits"
  if labels_out:
    nodes.append(helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0))
    outs = "labels"
  y = helper.make_tensor_value_info(outs, TensorProto.INT64 if labels_out else TensorProto.FLOAT,
                                    [1, dims[1], dims[2]] if labels_out else [1, 19, dims[1], dims[2]])
  g = helper.make_graph(nodes, "tiny_parser", [x], [y],
                        [numpy_helper.from_array(wts, "w"), numpy_helper.from_array(bias, "b")])
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
  m.ir_version = 8
  onnx.checker.check_model(m)
  onnx.save(m, str(path))
  return path


def _picture():
  img = np.full((60, 80, 3), 128, np.uint8)
  img[:, :20] = (255, 0, 0)
  img[:, 20:40] = (0, 255, 0)
  img[:, 40:60] = (0, 0, 255)
  return img


@pytest.mark.parametrize("labels,nhwc,labels_out,size", [("bisenet", False, False, None),
                                                          ("celebamask", True, False, 32),
                                                          ("celebamask", False, True, None)])
def test_onnx_parser_maps_classes_to_celebamask(tmp_path, labels, nhwc, labels_out, size):
  order = parsing.parse_label_order(labels)
  path = _tiny_model(tmp_path / "tiny.onnx", order, nhwc=nhwc, labels_out=labels_out, size=size)
  p = parsing.make_parser(str(path), labels=labels, size=64, mean=(0, 0, 0), std=(1, 1, 1))
  lab = p.parse(_picture(), np.zeros((478, 3), np.float32))
  assert lab.shape == (60, 80) and lab.dtype == np.uint8
  C = parsing.C
  assert (lab[5:-5, 3:17] == C["skin"]).all()
  assert (lab[5:-5, 23:37] == C["hair"]).all()
  assert (lab[5:-5, 43:57] == C["cloth"]).all()
  assert (lab[5:-5, 63:77] == C["background"]).all()


def test_onnx_parser_label_order_errors(tmp_path):
  with pytest.raises(ValueError, match="labels must be"):
    parsing.parse_label_order("skin,hair")
  with pytest.raises(ValueError, match="cannot load"):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    parsing.OnnxParser(str(tmp_path / "bad.onnx"))


def test_builtin_parser_classes(astro_regions):
  _, labels, _ = astro_regions
  present = {parsing.CLASSES[k] for k in np.unique(labels)}
  for c in ("background", "skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
            "u_lip", "l_lip", "hair", "neck", "cloth"):
    assert c in present, c
  for c in ("hat", "eye_g", "ear_r", "neck_l"):  # what the builtin parser cannot see
    assert c not in present
