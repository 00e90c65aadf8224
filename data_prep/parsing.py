"""Face parsing into the 19 CelebAMask-HQ classes, behind one interface.

    parser = make_parser("builtin")                 # no weights needed
    parser = make_parser("model.onnx", labels="bisenet")
    labels = parser.parse(rgb, face)                # HxW uint8, values in CLASSES order

`CLASSES` is CelebAMask-HQ's own order (its g_mask.py): 0 background, 1 skin, 2 nose,
3 eye_g (eyeglasses), 4 l_eye, 5 r_eye, 6 l_brow, 7 r_brow, 8 l_ear, 9 r_ear, 10 mouth
(inside of the mouth), 11 u_lip, 12 l_lip, 13 hair, 14 hat, 15 ear_r (earring),
16 neck_l (necklace), 17 neck, 18 cloth.

The region procedures never trust a parser's left/right: paired classes (eyes, brows,
ears) are merged and split again by the landmarks (facial midline), so a model that
uses the image's left works as well as one that uses the subject's.

OnnxParser: any ONNX model whose first output is per-class scores (N,19,h,w) or
(N,h,w,19), or a label map (N,h,w) / (N,1,h,w); the input is an RGB image resized to
the model's input size (or `size` when that is dynamic), scaled to [0, 1] and
normalised with `mean`/`std` (ImageNet by default, as BiSeNet and DML-CSR use), NCHW
unless the input's last dimension is 3.  `labels` names the model's class order:
"celebamask" (the order above; DML-CSR), "bisenet" (zllrunning/face-parsing.PyTorch)
or a comma-separated list of the 19 class names in the model's order.  `crop="full"`
parses the whole picture (aligned face images such as FFHQ/DFFD); `crop="face"`
parses a square of `crop_scale` times the landmark box around the face and labels the
rest background.

BuiltinParser (no weights): skin, brows, eyes, nose, lips and mouth from the landmark
mesh; person versus background from MediaPipe's selfie segmentation; hair, neck and
clothing split from the person mask by the geometry below; ears estimated.  It cannot
see hats, eyeglasses, earrings or necklaces (those classes stay empty), hair inside
the face oval (fringes are called skin), or tell hair from clothing below the
shoulders line; see docs/annotator.md.
"""

from __future__ import annotations

import numpy as np

from data_prep import geometry
from data_prep import mesh

CLASSES = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
           "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
C = {name: i for i, name in enumerate(CLASSES)}
LABEL_ORDERS = {
    "celebamask": CLASSES,
    "dmlcsr": CLASSES,
    "bisenet": ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
                "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"),
}


class FaceParser:
  """Interface: `parse(rgb HxWx3 uint8, landmarks (478,3) pixels) -> HxW uint8 in CLASSES`."""

  name = "parser"

  def parse(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def close(self):
    pass


def make_parser(spec: str = "builtin", **kw) -> FaceParser:
  if spec == "builtin":
    return BuiltinParser(**kw)
  if spec.endswith(".onnx"):
    return OnnxParser(spec, **kw)
  raise ValueError(f"unknown parser {spec!r}: use 'builtin' or a path to an .onnx model")


def parse_label_order(labels) -> tuple[str, ...]:
  if isinstance(labels, str):
    if labels in LABEL_ORDERS:
      return LABEL_ORDERS[labels]
    labels = [x.strip() for x in labels.split(",")]
  labels = tuple(labels)
  bad = [x for x in labels if x not in C]
  if bad or len(labels) != len(CLASSES) or len(set(labels)) != len(CLASSES):
    raise ValueError(f"labels must be 'celebamask', 'bisenet' or the {len(CLASSES)} names "
                     f"{', '.join(CLASSES)} in the model's order; got {labels!r}")
  return labels


class OnnxParser(FaceParser):
  name = "onnx"

  def __init__(self, path: str, labels="celebamask", size: int = 512,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop: str = "full",
               crop_scale: float = 2.0, threads: int = 1):
    # lazy: onnxruntime only when a parsing model is given
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
      self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types
      raise ValueError(f"{path}: cannot load the ONNX model ({e})") from None
    inp = self.sess.get_inputs()[0]
    self.input_name = inp.name
    shp = list(inp.shape)
    if len(shp) != 4:
      raise ValueError(f"{path}: expected a 4-D image input, got shape {shp}")
    self.nhwc = shp[3] == 3
    hw = shp[1:3] if self.nhwc else shp[2:4]
    self.size = tuple(int(d) if isinstance(d, int) else int(size) for d in hw)
    order = parse_label_order(labels)
    self.lut = np.array([C[n] for n in order], np.uint8)  # model id -> CLASSES id
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    if crop not in ("full", "face"):
      raise ValueError(f"crop must be 'full' or 'face', not {crop!r}")
    self.crop, self.crop_scale = crop, float(crop_scale)

  def _run(self, rgb: np.ndarray) -> np.ndarray:
    # lazy: OpenCV only when parsing runs
    import cv2
    h, w = rgb.shape[:2]
    th, tw = self.size
    x = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = (x - self.mean) / self.std
    x = x[None] if self.nhwc else x.transpose(2, 0, 1)[None]
    out = np.asarray(self.sess.run(None, {self.input_name: np.ascontiguousarray(x)})[0])
    if out.ndim == 4 and out.shape[1] == len(CLASSES):
      lab = out[0].argmax(0)
    elif out.ndim == 4 and out.shape[3] == len(CLASSES):
      lab = out[0].argmax(-1)
    elif out.ndim == 4 and out.shape[1] == 1:
      lab = out[0, 0]
    elif out.ndim == 3:
      lab = out[0]
    else:
      raise ValueError(f"ONNX parser output of shape {out.shape}: expected (N,19,h,w), (N,h,w,19) or (N,h,w)")
    lab = np.clip(lab.astype(np.int64), 0, len(CLASSES) - 1).astype(np.uint8)
    lab = self.lut[lab]
    return cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)

  def parse(self, rgb, landmarks):
    if self.crop == "full":
      return self._run(rgb)
    h, w = rgb.shape[:2]
    lm = np.asarray(landmarks)[:, :2]
    c = (lm.min(0) + lm.max(0)) / 2
    half = max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1])) * self.crop_scale / 2
    x0, y0 = int(np.floor(c[0] - half)), int(np.floor(c[1] - half))
    x1, y1 = int(np.ceil(c[0] + half)), int(np.ceil(c[1] + half))
    pad = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    pad[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    lab = self._run(pad)
    out = np.zeros((h, w), np.uint8)
    out[sy0:sy1, sx0:sx1] = lab[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return out


class BuiltinParser(FaceParser):
  """Landmark mesh + selfie segmentation; see the module docstring and docs/annotator.md.

  Geometry (frame units: s = distance between the eye centres, v grows down the face):
  * face: the face-oval polygon is skin; nose, brows, eyes, lips and the inside of the
    mouth are landmark polygons painted over it (l_* on the subject's left).
  * person: selfie segmentation > `threshold` (run on a copy shrunk to the model's
    256x256 input, probability upsampled bilinearly; averaged with that of the
    mirrored picture when flip_average=True), united with the face.
  * ears: on each side an ellipse just outside the oval at landmark 234/454, spanning
    from the lateral brow end down to the nose base, half-width 0.14 s scaled by how
    much of that side faces the camera (none when the side is turned away), kept where
    it is person and not face.
  * neck: person pixels below the jaw in the column between the jaw-angle landmarks
    (172/397), down to NECK_LENGTH (0.35) face heights (landmark 10 to 152) below the
    chin.
  * cloth: person pixels outside that neck column below the line through the lower
    jaw-angle landmark (172 or 397).
  * hair: every other person pixel that is not face or ear: the head above that line.
    Hair hanging lower is therefore called cloth.
  """

  name = "builtin"

  # The selfie models' input (w, h): MediaPipe stretches any picture to it (no aspect
  # ratio kept) and upsamples its 256x256 (or 256x144) output to the picture's size.
  MODEL_SIZE = {0: (256, 256), 1: (256, 144)}

  def __init__(self, threshold: float = 0.5, model_selection: int = 0, flip_average: bool = True):
    # lazy: MediaPipe's segmenter loads only when asked for
    import mediapipe as mp
    self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)
    self.threshold = threshold
    self.flip_average = flip_average
    self.model_size = self.MODEL_SIZE[model_selection]

  def close(self):
    self._seg.close()

  def probability(self, rgb: np.ndarray) -> np.ndarray:
    """Person probability at the model's resolution (or the picture's, when smaller),
    averaged with that of the mirrored picture (mirrored back) under flip_average.

    A larger picture is shrunk to the model's input size here (INTER_AREA) rather than
    inside MediaPipe: the model sees the same stretched picture, MediaPipe only handles
    model-sized arrays (~2 ms less a pass at 512x512), and the flip average is taken
    before upsampling.
    """
    # lazy: as above
    import cv2
    h, w = rgb.shape[:2]
    mw, mh = self.model_size
    if w > mw and h > mh:
      rgb = cv2.resize(rgb, (mw, mh), interpolation=cv2.INTER_AREA)
    prob = self._seg.process(np.ascontiguousarray(rgb)).segmentation_mask
    if self.flip_average:
      prob_f = self._seg.process(cv2.flip(rgb, 1)).segmentation_mask  # cv2.flip: x[:, ::-1], faster
      prob = (prob + cv2.flip(prob_f, 1)) * 0.5
    return prob

  def person(self, rgb: np.ndarray) -> np.ndarray:
    """The probability, upsampled to the picture's size (INTER_LINEAR), > threshold."""
    # lazy: as above
    import cv2
    h, w = rgb.shape[:2]
    prob = self.probability(rgb)
    if prob.shape != (h, w):
      prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    return prob > self.threshold

  def parse(self, rgb, landmarks):
    return builtin_labels(self.person(rgb), landmarks)


NECK_LENGTH = 0.35


def builtin_labels(person: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
  """The builtin parser's label map from a person mask and the landmarks."""
  shape = person.shape
  f = geometry.FaceFrame(landmarks, shape)
  P = f.pts
  lab = np.zeros(shape, np.uint8)
  face = geometry.fill(shape, P(mesh.FACE_OVAL))
  person = person | face
  v = f.v_map

  # neck column and clothing line
  chin = f.uv(P([152]))[0]
  top = f.uv(P([10]))[0]
  face_h = max(chin[1] - top[1], 0.5)
  jaw_r, jaw_l = f.uv(P([172]))[0], f.uv(P([397]))[0]
  v_neck_bot = chin[1] + NECK_LENGTH * face_h
  col = geometry.fill(shape, f.xy(np.array([[jaw_r[0], jaw_r[1]], [jaw_l[0], jaw_l[1]],
                                     [jaw_l[0], v_neck_bot], [jaw_r[0], v_neck_bot]])))
  body = person & ~face
  neck = body & col
  cloth = body & ~col & (v > max(jaw_r[1], jaw_l[1]))

  # estimated ears
  ears = {}
  for side, cls in (("R", C["r_ear"]), ("L", C["l_ear"])):
    mir = (lambda i: i) if side == "R" else mesh.mirror
    anchor = f.uv(P([mir(mesh.EAR_ANCHOR_R)]))[0]
    outer_eye = f.uv(P([mir(mesh.EYE_OUTER_R)]))[0]
    out_dir = -1.0 if side == "R" else 1.0          # +u is the subject's left
    exposure = (outer_eye[0] - anchor[0]) * out_dir * -1  # >0 when the side faces the camera
    scale = np.clip(exposure / 0.35, 0.0, 1.2)
    if scale < 0.25:
      ears[cls] = np.zeros(shape, bool)
      continue
    v0 = f.uv(P([mir(mesh.EAR_TOP_R)]))[0][1]
    v1 = f.uv(P([mesh.EAR_BOTTOM_R]))[0][1]
    c_uv = np.array([anchor[0] + out_dir * 0.06 * scale, (v0 + v1) / 2])
    c = f.xy(c_uv)
    angle = np.degrees(np.arctan2(f.ex[1], f.ex[0]))
    ears[cls] = geometry.ellipse(shape, c, (0.14 * scale * f.s, max(0.5, (v1 - v0) / 2) * f.s), angle) & person & ~face

  np.copyto(lab, C["hair"], where=person)  # copyto/fillPoly: far cheaper than lab[mask] = c
  np.copyto(lab, C["cloth"], where=cloth)
  np.copyto(lab, C["neck"], where=neck)
  for cls, m in ears.items():
    np.copyto(lab, cls, where=m)
  for cls, poly in (("skin", mesh.FACE_OVAL), ("nose", mesh.sym_polygon(mesh.NOSE_CHAIN)),
                    ("r_brow", mesh.BROW), ("l_brow", mesh.mirror(mesh.BROW)), ("r_eye", mesh.EYE),
                    ("l_eye", mesh.mirror(mesh.EYE)), ("u_lip", mesh.LIP_OUT_UP + mesh.LIP_IN_UP[::-1]),
                    ("l_lip", mesh.LIP_OUT_LO + mesh.LIP_IN_LO[::-1]),
                    ("mouth", mesh.LIP_IN_UP + mesh.LIP_IN_LO[-2:0:-1])):
    geometry.paint(lab, P(poly), C[cls])  # later polygons paint over earlier ones
  return lab
