"""harmony_rt.media: all 8 EXIF orientations (mirrored ones too) and a mirrored video display matrix read upright."""

import struct
import zlib

import av
import numpy as np
import pytest

from harmony_rt import media

# EXIF orientation -> how the stored pixels are shown (what a viewer does with them)
SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored left-right, then turned 90 degrees counter-clockwise
    6: lambda a: np.rot90(a, -1),  # turned 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # mirrored left-right, then turned 90 degrees clockwise
    8: lambda a: np.rot90(a, 1),
}
# the note read_image leaves for each
NOTES = {
    1: [], 2: ["mirrored left to right, as its orientation metadata says"],
    3: ["rotated 180 degrees clockwise, as its orientation metadata says"],
    4: ["mirrored left to right and rotated 180 degrees clockwise, as its orientation metadata says"],
    5: ["mirrored left to right and rotated 270 degrees clockwise, as its orientation metadata says"],
    6: ["rotated 90 degrees clockwise, as its orientation metadata says"],
    7: ["mirrored left to right and rotated 90 degrees clockwise, as its orientation metadata says"],
    8: ["rotated 270 degrees clockwise, as its orientation metadata says"],
}


def upright_image(h=32, w=64):
    """Four flat quadrants of distinct colours (16-pixel aligned, so 4:2:0 JPEG keeps them): no two of the
    8 orientations of it are alike."""
    img = np.empty((h, w, 3), np.uint8)
    img[:h // 2, :w // 2] = (230, 30, 30)
    img[:h // 2, w // 2:] = (30, 200, 40)
    img[h // 2:, :w // 2] = (40, 50, 220)
    img[h // 2:, w // 2:] = (240, 230, 40)
    return img


def stored_for(upright, orientation):
    """The pixels a camera stores so that `orientation` shows them as `upright`."""
    for _ in range(8):  # each map is a bijection of period <= 4: walk back to the preimage
        cand = upright
        for _ in range(4):
            if np.array_equal(SHOWN[orientation](cand), upright):
                return np.ascontiguousarray(cand)
            cand = SHOWN[orientation](cand)
    raise AssertionError(orientation)


def exif_tiff(orientation):
    """A big-endian TIFF header with one IFD holding only the orientation tag."""
    return (b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
            + b"\0" * 4)


def exif_jpeg(rgb, orientation):
    """A JPEG (PyAV's mjpeg encoder) with an EXIF APP1 segment right after SOI."""
    h, w = rgb.shape[:2]
    cc = av.CodecContext.create("mjpeg", "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base = w, h, "yuvj444p", 1
    cc.options = {"qmin": "1", "qmax": "2"}
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj444p")
    jpeg = b"".join(bytes(p) for p in cc.encode(frame) + cc.encode(None))
    assert jpeg[:2] == b"\xff\xd8"
    payload = b"Exif\0\0" + exif_tiff(orientation)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def exif_png(rgb, orientation):
    """An RGB PNG with an eXIf chunk (lossless: compared exactly)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + r.tobytes() for r in rgb)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"eXIf", exif_tiff(orientation)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_stored_for_inverts_shown():
    up = upright_image()
    shown = [SHOWN[o](stored_for(up, o)) for o in SHOWN]
    assert all(np.array_equal(s, up) for s in shown)
    assert len({stored_for(up, o).tobytes() for o in SHOWN}) == 8  # all 8 stored layouts differ


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_jpeg_every_exif_orientation_upright_and_unmirrored(tmp_path, orientation):
    """A photo stored with any of the 8 EXIF orientations, mirrored ones (2, 4, 5, 7) included, reads back
    as the upright original."""
    up = upright_image()
    (tmp_path / "photo.jpg").write_bytes(exif_jpeg(stored_for(up, orientation), orientation))
    notes = []
    got = media.read_image(tmp_path / "photo.jpg", *up.shape[:2], notes)
    err = np.abs(got.astype(int) - up)
    assert err.max() <= 12 and err.mean() < 2, (orientation, err.max(), err.mean())
    assert notes == NOTES[orientation]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_png_every_exif_orientation_exact(tmp_path, orientation):
    up = upright_image(8, 12)
    (tmp_path / "photo.png").write_bytes(exif_png(stored_for(up, orientation), orientation))
    notes = []
    assert np.array_equal(media.read_image(tmp_path / "photo.png", *up.shape[:2], notes), up)
    assert notes == NOTES[orientation]


def tkhd_matrix(path, out, a, b, c, d):
    """Copy mp4 `path` to `out` with the video track's display matrix set to [[a, b], [c, d]] (16.16)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 4 + 40  # version 0 tkhd: the 3x3 matrix follows 40 bytes of fields
    data[at:at + 36] = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 0x40000000)
    out.write_bytes(data)


@pytest.mark.parametrize("matrix,orientation", [((-1, 0, 0, 1), 2), ((1, 0, 0, -1), 4), ((0, 1, 1, 0), 5),
                                                ((0, -1, -1, 0), 7), ((0, 1, -1, 0), 6)])
def test_read_video_undoes_a_mirrored_display_matrix(tmp_path, matrix, orientation):
    """A video track whose display matrix mirrors (negative determinant) reads upright and unmirrored,
    like the EXIF orientation with the same matrix."""
    up = upright_image()
    stored = stored_for(up, orientation)
    media.write_mp4(tmp_path / "v.mp4", np.repeat(stored[None], 4, axis=0), 8)
    tkhd_matrix(tmp_path / "v.mp4", tmp_path / "m.mp4", *matrix)
    got, notes = media.read_video(tmp_path / "m.mp4", 8, *up.shape[:2])
    assert got.shape == (4, *up.shape)
    err = np.abs(got.astype(int) - up)
    assert np.median(err) <= 3 and (err > 40).mean() < 0.05, (np.median(err), (err > 40).mean())
    assert notes == NOTES[orientation]
