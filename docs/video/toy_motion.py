"""Toy clips for the motion trial in README's video section (numpy only).

8 frames (16 for the test file) of 8x8 pixels; a random 4x4 pattern (its middle 2x2 always lit)
moves and bounces off the walls. With patches of 2 the model sees 4x4 tokens a frame.

  whole: positions 0, 2 or 4 and velocities -2, 0 or +2 pixels a frame on each axis, so every
         move is a whole number of tokens.
  pixel: any whole-pixel start and -1, 0 or +1 pixel a frame on each axis: half a token, the
         same every frame, so the future is certain.
  half:  any start, a random direction at 1 pixel a frame, positions rounded to the pixel, so a
         move is half a token or less on each axis (the preset's 1.6 pixels against patches of 4
         is 0.4 of a token).
  smooth: as half, but each frame blurred (a Gaussian of 1 pixel), so that a shift by part of a
         token is close to a blend of neighbouring tokens, as in a smooth latent space.

python3 docs/video/toy_motion.py whole|pixel|half|smooth OUT_DIR   writes OUT_DIR/train.npz and test.npz
python3 docs/video/toy_motion.py half|smooth OUT.npz --best  the least-MSE prediction of test.npz
python3 docs/video/toy_motion.py score PREDICTED TRUTH  MSE of frames 4-7 against copying frame 3
(`acdit eval-video` needs frames of at least 11x11, its SSIM window)
"""
import os
import sys

import numpy as np

SIZE, PATTERN = 8, 4
LIMIT = SIZE - PATTERN
TEST_SEED = 2


def start(rng, motion):
    """A clip's pattern, first position and velocity."""
    pattern = (rng.random((PATTERN, PATTERN)) < 0.6).astype(np.uint8) * 255
    pattern[1:3, 1:3] = 255
    if motion == "whole":
        pos = rng.integers(0, 3, 2).astype(float) * 2
        vel = rng.choice([-2.0, 0.0, 2.0], 2)
    elif motion == "pixel":
        pos = rng.integers(0, LIMIT + 1, 2).astype(float)
        vel = rng.choice([-1.0, 0.0, 1.0], 2)
    else:
        pos = rng.random(2) * LIMIT
        angle = rng.random() * 2 * np.pi
        vel = np.array([np.sin(angle), np.cos(angle)])
    return pattern, pos, vel


def clip(rng, frames, motion):
    pattern, pos, vel = start(rng, motion)
    return render(pattern, corners(pos, vel, frames), motion)


def corners(pos, vel, frames):
    """(frames, ..., 2) the pattern's top-left pixel in each frame, for one start or many."""
    pos, vel = np.array(pos, float), np.array(vel, float)
    out = []
    for _ in range(frames):
        out.append(np.rint(pos).astype(int))
        pos = pos + vel
        low, high = pos < 0, pos > LIMIT  # reflect off the walls
        pos = np.where(low, -pos, np.where(high, 2 * LIMIT - pos, pos))
        vel = np.where(low | high, -vel, vel)
    return np.stack(out)


def render(pattern, corner_by_frame, motion):
    out = np.zeros((len(corner_by_frame), SIZE, SIZE), np.uint8)
    for f, (y, x) in enumerate(corner_by_frame):
        out[f, y:y + PATTERN, x:x + PATTERN] = pattern
    if motion == "smooth":
        out = np.stack([blur(frame) for frame in out])
    return out


def blur(frame, sigma=1.0):
    """A separable Gaussian blur, zero outside the frame."""
    taps = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    taps /= taps.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, taps, "same"), 1, frame.astype(float))
    both = np.apply_along_axis(lambda c: np.convolve(c, taps, "same"), 0, rows)
    return np.rint(both).astype(np.uint8)


def write(path, n, frames, motion, seed):
    rng = np.random.default_rng(seed)
    clips = np.stack([clip(rng, frames, motion) for _ in range(n)])
    labels = rng.integers(0, 10, n).astype(np.int64)
    np.savez(path, clips=clips, labels=labels)


def score(predicted, truth):
    pred = np.load(predicted)["clips"][:, :8].astype(np.float64) / 127.5 - 1
    real = np.load(truth)["clips"][: len(pred), :8].astype(np.float64) / 127.5 - 1
    model = ((pred[:, 4:] - real[:, 4:]) ** 2).mean(axis=(0, 2, 3))
    copy = ((real[:, 3:4] - real[:, 4:]) ** 2).mean(axis=(0, 2, 3))
    print("frame  model   copy-last")
    for f in range(4):
        print(f"{4 + f:>5}  {model[f]:.4f}  {copy[f]:.4f}")
    print(f"MSE over frames 4-7: {model.sum() / copy.sum():.3f} of copying the last context frame")


def best(motion, path, clips=100):
    """The least-MSE prediction of frames 4-7 from frames 0-3 (the posterior mean), for half and
    smooth: the start is known only to the pixel it rounds to, so the future is uncertain. The
    posterior over (start, direction) is the uniform prior on a fine grid, kept where it rounds
    to the four positions seen; the test file's clips are drawn again to know its patterns."""
    rng = np.random.default_rng(TEST_SEED)
    grid = np.linspace(-0.5, 0.5, 41)
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    dy, dx, a = np.meshgrid(grid, grid, angles, indexing="ij")
    offsets = np.stack([dy, dx], -1).reshape(-1, 2)  # around the first pixel seen
    a = a.reshape(-1)
    directions = np.stack([np.sin(a), np.cos(a)], -1)
    out = []
    for _ in range(clips):
        pattern, pos, vel = start(rng, motion)
        seen = corners(pos, vel, 8)
        starts = seen[0] + offsets
        paths = corners(starts, directions, 8)
        inside = ((starts >= 0) & (starts <= LIMIT)).all(axis=1)
        kept = inside & (paths[:4] == seen[:4, None]).all(axis=(0, 2))
        frames = render(pattern, seen[:4], motion).astype(np.float64)
        future = []
        for f in range(4, 8):
            where, count = np.unique(paths[f, kept], axis=0, return_counts=True)
            drawn = render(pattern, where, motion).astype(np.float64)
            future.append((drawn * count[:, None, None]).sum(0) / count.sum())
        out.append(np.concatenate([frames, np.stack(future)]))
    np.savez(path, clips=np.rint(np.stack(out)).astype(np.uint8))


if __name__ == "__main__":
    if len(sys.argv) < 3 or (sys.argv[1] == "score" and len(sys.argv) < 4):
        sys.exit(__doc__)
    if sys.argv[1] == "score":
        score(sys.argv[2], sys.argv[3])
        sys.exit()
    motion, out = sys.argv[1], sys.argv[2]
    assert motion in ("whole", "pixel", "half", "smooth"), "motion: whole, pixel, half or smooth"
    if len(sys.argv) > 3 and sys.argv[3] == "--best":
        assert motion in ("half", "smooth"), f"{motion} motion is certain: the best prediction is the truth"
        best(motion, out)
        sys.exit()
    os.makedirs(out, exist_ok=True)
    write(f"{out}/train.npz", 20000, 8, motion, 1)
    write(f"{out}/test.npz", 200, 16, motion, TEST_SEED)
