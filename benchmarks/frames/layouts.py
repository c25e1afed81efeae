"""Page and card layouts for checking dedup's template rules on frames they were not designed on
(BENCHMARKS.md, issue 26). "design": a light photo post and a dark text-and-photo card (the frame
rule was written looking at these); "heldout": a news article and a phone photo viewer, made after.

usage: python benchmarks/frames/layouts.py design|heldout CORELDIR OUT/copies — 20 different Corel
images per layout; then copy CORELDIR to OUT/corel, `cbir index build OUT --model lite0.onnx --index
IDX` and `cbir bench dedup --index IDX --data OUT/corel --copies OUT/copies`.
"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw

from cbir.bench.augly_suite import pick


def post(photo):
    c = Image.new("RGB", (640, 860), "white")
    d = ImageDraw.Draw(c)
    d.ellipse((20, 20, 70, 70), fill=(200, 120, 60))
    d.text((85, 28), "travel_daily", fill="black", font_size=20)
    d.text((85, 52), "Sponsored · Lisbon, Portugal", fill=(110, 110, 110), font_size=14)
    p = photo.resize((600, round(photo.height * 600 / photo.width)))
    c.paste(p, (20, 90))
    y = 90 + p.height + 14
    d.ellipse((24, y, 50, y + 24), outline="black", width=3)
    d.rectangle((64, y, 92, y + 22), outline="black", width=3)
    d.polygon([(110, y + 22), (136, y), (136, y + 22)], outline="black", width=3)
    d.text((24, y + 36), "1,024 likes", fill="black", font_size=18)
    d.text((24, y + 62), "travel_daily  Golden hour never gets old #travel #photo", fill="black", font_size=16)
    d.text((24, y + 86), "View all 87 comments", fill=(140, 140, 140), font_size=16)
    return c


def card(photo):
    c = Image.new("RGB", (720, 900), (21, 32, 43))
    d = ImageDraw.Draw(c)
    d.ellipse((30, 30, 90, 90), fill=(29, 155, 240))
    d.text((105, 38), "Daily Pictures", fill="white", font_size=22)
    d.text((105, 66), "@dailypics", fill=(136, 153, 166), font_size=16)
    d.text((30, 110), "You will not believe where this was taken. Thread below 👇", fill="white", font_size=20)
    d.text((30, 140), "Share if you have been there too!", fill="white", font_size=20)
    p = photo.resize((660, round(photo.height * 660 / photo.width)))
    c.paste(p, (30, 190))
    y = 190 + p.height + 20
    d.text((30, y), "12:04 PM · Dec 5, 2026 · 48.2K Views", fill=(136, 153, 166), font_size=16)
    d.line((30, y + 34, 690, y + 34), fill=(56, 68, 77), width=1)
    d.text((30, y + 48), "1,204 Reposts   356 Quotes   9,870 Likes", fill="white", font_size=16)
    return c


def article(photo):
    c = Image.new("RGB", (800, 1000), (250, 248, 244))
    d = ImageDraw.Draw(c)
    d.rectangle((0, 0, 800, 56), fill=(160, 20, 30))
    d.text((24, 14), "THE MORNING HERALD", fill="white", font_size=24)
    d.text((40, 80), "Travellers return to the places", fill="black", font_size=34)
    d.text((40, 122), "they photographed decades ago", fill="black", font_size=34)
    d.text((40, 172), "By Ana Souza · 5 December 2026 · 6 min read", fill=(90, 90, 90), font_size=16)
    p = photo.resize((720, round(photo.height * 720 / photo.width)))
    c.paste(p, (40, 210))
    y = 210 + p.height + 8
    d.text((40, y), "Photograph: archive. Readers sent us their old pictures.", fill=(110, 110, 110), font_size=14)
    for k in range(6):
        d.text(
            (40, y + 40 + 26 * k),
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
            fill=(30, 30, 30),
            font_size=17,
        )
    return c


def viewer(photo):
    c = Image.new("RGB", (540, 1100), "black")
    d = ImageDraw.Draw(c)
    d.text((24, 14), "9:41", fill="white", font_size=18)
    d.rectangle((470, 18, 506, 32), outline="white", width=2)
    d.text((20, 60), "< Albums", fill=(10, 132, 255), font_size=20)
    d.text((420, 60), "Edit", fill=(10, 132, 255), font_size=20)
    p = photo.resize((540, round(photo.height * 540 / photo.width)))
    c.paste(p, (0, 1100 // 2 - p.height // 2))
    for k, x in enumerate((40, 160, 280, 400)):
        d.rectangle((x, 1030, x + 36, 1066), outline="white", width=2)
    d.text((200, 990), "Yesterday 18:20", fill="white", font_size=16)
    return c


SETS = {
    "design": (("post", post, 11), ("card", card, 12)),
    "heldout": (("article", article, 21), ("viewer", viewer, 22)),
}

if __name__ == "__main__":
    which, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    for name, fn, seed in SETS[which]:
        for p in pick(src, 20, seed):
            dst = out / name / p.relative_to(src).with_suffix(".jpg")
            dst.parent.mkdir(parents=True, exist_ok=True)
            fn(Image.open(p).convert("RGB")).save(dst, quality=90)
    print("written", sum(1 for _ in out.rglob("*.jpg")))
