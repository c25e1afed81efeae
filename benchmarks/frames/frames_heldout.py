"""Two more layouts, made after frame_pairs was written (held out): a news article and a phone viewer.
usage: python benchmarks/frames/frames_heldout.py CORELDIR OUT/copies — 20 different Corel images per layout, then
cbir index build OUT (with OUT/corel a copy of CORELDIR) and cbir bench dedup (BENCHMARKS.md, issue 26)."""
import sys
from pathlib import Path
from PIL import Image, ImageDraw
from cbir.bench.augly_suite import pick
src, out = Path(sys.argv[1]), Path(sys.argv[2])

def article(photo):
    c = Image.new("RGB", (800, 1000), (250, 248, 244)); d = ImageDraw.Draw(c)
    d.rectangle((0, 0, 800, 56), fill=(160, 20, 30)); d.text((24, 14), "THE MORNING HERALD", fill="white", font_size=24)
    d.text((40, 80), "Travellers return to the places", fill="black", font_size=34)
    d.text((40, 122), "they photographed decades ago", fill="black", font_size=34)
    d.text((40, 172), "By Ana Souza · 5 December 2026 · 6 min read", fill=(90, 90, 90), font_size=16)
    p = photo.resize((720, round(photo.height * 720 / photo.width))); c.paste(p, (40, 210))
    y = 210 + p.height + 8
    d.text((40, y), "Photograph: archive. Readers sent us their old pictures.", fill=(110, 110, 110), font_size=14)
    for k in range(6):
        d.text((40, y + 40 + 26 * k), "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.", fill=(30, 30, 30), font_size=17)
    return c

def viewer(photo):
    c = Image.new("RGB", (540, 1100), "black"); d = ImageDraw.Draw(c)
    d.text((24, 14), "9:41", fill="white", font_size=18); d.rectangle((470, 18, 506, 32), outline="white", width=2)
    d.text((20, 60), "< Albums", fill=(10, 132, 255), font_size=20); d.text((420, 60), "Edit", fill=(10, 132, 255), font_size=20)
    p = photo.resize((540, round(photo.height * 540 / photo.width))); c.paste(p, (0, 1100 // 2 - p.height // 2))
    for k, x in enumerate((40, 160, 280, 400)):
        d.rectangle((x, 1030, x + 36, 1066), outline="white", width=2)
    d.text((200, 990), "Yesterday 18:20", fill="white", font_size=16)
    return c

for name, fn, seed in (("article", article, 21), ("viewer", viewer, 22)):
    for p in pick(src, 20, seed):
        dst = out / name / p.relative_to(src).with_suffix(".jpg"); dst.parent.mkdir(parents=True, exist_ok=True)
        fn(Image.open(p).convert("RGB")).save(dst, quality=90)
print("written", sum(1 for _ in out.rglob("*.jpg")))
