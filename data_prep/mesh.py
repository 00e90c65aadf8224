"""MediaPipe FaceMesh (478 landmarks, refined) index sets used by the region procedures.

Every bilateral set is written once for the subject's RIGHT side (the image's left
in a frontal photo) and the left side is its image under `MIRROR`, the landmark
permutation of a horizontal flip.  MIRROR was measured, not typed: landmarks of a
flipped photo, flipped back, matched one-to-one (Hungarian) to the landmarks of the
original (skimage astronaut); it is an involution, fixes the 28 midline points and
agrees with MediaPipe's own left/right connection sets (33<->263, 133<->362,
468<->473, 70<->300, 61<->291, 234<->454 ...).  Because both sides come from one
definition, the procedures are mirror-symmetric by construction.

Chains named `*_CHAIN` run from a midline point down the subject's right half to
another midline point; `sym_polygon(chain)` closes them with their mirror image.
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 478

# fmt: off
MIRROR = np.array([
    0, 1, 2, 248, 4, 5, 6, 249, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 250, 251, 252, 253,
    254, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272,
    273, 274, 275, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291,
    292, 293, 294, 295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310,
    311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321, 322, 323, 94, 324, 325, 326, 327, 328,
    329, 330, 331, 332, 333, 334, 335, 336, 337, 338, 339, 340, 341, 342, 343, 344, 345, 346, 347,
    348, 349, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 360, 361, 362, 363, 364, 365, 366,
    367, 368, 369, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 151, 152, 380, 381, 382, 383,
    384, 385, 386, 387, 388, 389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397, 398, 399, 175,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418,
    195, 419, 197, 420, 199, 200, 421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433,
    434, 435, 436, 437, 438, 439, 440, 441, 442, 443, 444, 445, 446, 447, 448, 449, 450, 451, 452,
    453, 454, 455, 456, 457, 458, 459, 460, 461, 462, 463, 464, 465, 466, 467, 3, 7, 20, 21, 22, 23,
    24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
    48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71,
    72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 95, 96,
    97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116,
    117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135,
    136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 153, 154, 155, 156,
    157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170, 171, 172, 173, 174, 176, 177, 178,
    179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 196, 198, 201,
    202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220,
    221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239,
    240, 241, 242, 243, 244, 245, 246, 247, 473, 476, 475, 474, 477, 468, 471, 470, 469, 472
], dtype=np.int32)
# fmt: on


def mirror(idx):
  """The same anatomical point(s) on the other side of the face."""
  if isinstance(idx, (int, np.integer)):
    return int(MIRROR[idx])
  return [int(MIRROR[i]) for i in idx]


def sym_polygon(chain):
  """Polygon: a right-half chain (midline to midline) closed by its mirror image."""
  back = mirror(chain)[::-1]
  return list(chain) + back[1:-1]


# --- midline (fixed by MIRROR), top of forehead to chin
MIDLINE = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 164, 0, 11, 12, 13, 14, 15,
           16, 17, 18, 200, 199, 175, 152]

# --- face oval of the subject's right half, top centre (10) to chin (152), cut into the
# five parts of the FICT face-edge concepts (shared end points).
OVAL_PARTS = {
    "forehead": [10, 109, 67, 103, 54],
    "temple": [54, 21, 162],
    "ear": [162, 127, 234, 93],
    "cheek": [93, 132, 58],
    "jaws": [58, 172, 136, 150, 149, 176, 148, 152],
}
OVAL_R = [10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152]
FACE_OVAL = sym_polygon(OVAL_R)

# --- eye (subject's right): lid contour and the concentric rings of the mesh around it,
# each from the lateral (outer) end to the medial (inner) end.
EYE_UP = [33, 246, 161, 160, 159, 158, 157, 173, 133]
EYE_LO = [33, 7, 163, 144, 145, 153, 154, 155, 133]
RING2_UP = [130, 247, 30, 29, 27, 28, 56, 190, 243]
RING2_LO = [130, 25, 110, 24, 23, 22, 26, 112, 243]
RING3_UP = [226, 113, 225, 224, 223, 222, 221, 189, 244]
RING3_LO = [226, 31, 228, 229, 230, 231, 232, 233, 244]
RING4_LO = [143, 111, 117, 118, 119, 120, 121, 128, 245]
EYE = EYE_UP + EYE_LO[-2:0:-1]
IRIS_CENTER = 468
IRIS_RIM = [469, 470, 471, 472]

# --- eyebrow (subject's right), lateral (tail) to medial (head)
BROW_UP = [70, 63, 105, 66, 107]
BROW_LO = [46, 53, 52, 65, 55]
BROW = BROW_UP + BROW_LO[::-1]
BROW_HEAD_R = [BROW_UP[-1], BROW_LO[-1]]  # the inner end (107, 55)
BROW_TAIL_R = [BROW_UP[0], BROW_LO[0]]    # the outer end (70, 46)

# --- mouth, right corner to left corner
LIP_OUT_UP = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIP_OUT_LO = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
MOUTH_CORNER_R, MOUTH_CORNER_L = LIP_OUT_UP[0], LIP_OUT_UP[-1]  # 61, 291
LIP_IN_UP = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIP_IN_LO = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]

# --- nose
NOSE_CHAIN = [168, 122, 174, 236, 198, 209, 129, 64, 98, 97, 2]    # whole nose outline
NASION_CHAIN = [168, 193, 122, 6]          # root of the nose between the eyes
BRIDGE_CHAIN = [6, 122, 196, 3, 51, 5]     # dorsum, root to the top of the tip
BASE_CHAIN = [5, 51, 45, 44, 125, 141, 2]  # tip, columella and base
ALA_R = [134, 45, 44, 99, 240, 64, 129, 131]
NASOLABIAL_R = [129, 203, 206, 216, 212]

# --- regions between features
BETWEEN_BROWS_CHAIN = [9, 107, 55, 8]
BETWEEN_EYES_CHAIN = [168, 193, 189, 190, 133, 243, 244, 245, 122, 6]
PHILTRUM_CHAIN = [2, 167, 37, 0]

# --- forehead / temple / cheek / jaw / chin zones (subject's right)
FOREHEAD_TOP_R = [10, 109, 67, 103, 54]           # pushed upwards by the procedure
FOREHEAD_BOTTOM_R = [54, 70, 63, 105, 66, 107, 9]  # brow top line to the glabella
TEMPLE_R = [54, 21, 162, 127, 143, 35, 124, 46, 70]
TEMPLE_LATERAL_R = TEMPLE_R[:4]   # along the face oval (pushed outwards by the procedure)
TEMPLE_INNER_R = TEMPLE_R[4:]     # eye corner to the brow's tail
UPPER_SOCKET_R = RING3_UP + [193, 55, 65, 52, 53, 46, 124, 35]
CHEEK_R = [127, 143, 111, 117, 118, 119, 120, 121, 128, 245, 188, 174, 236, 198, 209, 129,
           203, 206, 216, 212, 214, 138, 172, 58, 132, 93, 234]
CHEEK_JAW_LINE_R = [212, 214, 138, 172]            # top edge of the jaws
JAWLINE_R = [58, 172, 136, 150, 149, 176]           # bottom edge of the jaws
JAW_R = [212, 214, 138, 172, 136, 150, 149, 176, 140, 32, 194, 182, 106, 43, 61, 57]
CHIN_CHAIN = [17, 84, 181, 91, 146, 43, 106, 182, 194, 32, 140, 176, 148, 152]

# --- ear anchors: where the ear meets the face, and the vertical extent of an ear
EAR_ANCHOR_R = 234
EAR_TOP_R = 46      # lateral end of the brow
EAR_BOTTOM_R = 2    # level of the nose base (midline)
EYE_OUTER_R = 33
