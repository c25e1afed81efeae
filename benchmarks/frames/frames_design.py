"""Two layouts the dedup rules never saw: a light photo post and a dark text-and-photo card.
usage: python benchmarks/frames/frames_design.py CORELDIR OUT/copies — 20 different Corel images per layout, then
cbir index build OUT (with OUT/corel a copy of CORELDIR) and cbir bench dedup (BENCHMARKS.md, issue 26)."""
import sys
from pathlib import Path
from PIL import Image, ImageDraw
from cbir.bench.augly_suite import pick
src, out = Path(sys.argv[1]), Path(sys.argv[2])

def post(photo):
    c = Image.new("RGB", (640, 860), "white"); d = ImageDraw.Draw(c)
    d.ellipse((20, 20, 70, 70), fill=(200, 120, 60)); d.text((85, 28), "travel_daily", fill="black", font_size=20)
    d.text((85, 52), "Sponsored · Lisbon, Portugal", fill=(110, 110, 110), font_size=14)
    p = photo.resize((600, round(photo.height * 600 / photo.width))); c.paste(p, (20, 90))
    y = 90 + p.height + 14
    d.ellipse((24, y, 50, y + 24), outline="black", width=3); d.rectangle((64, y, 92, y + 22), outline="black", width=3)
    d.polygon([(110, y + 22), (136, y), (136, y + 22)], outline="black", width=3)
    d.text((24, y + 36), "1,024 likes", fill="black", font_size=18)
    d.text((24, y + 62), "travel_daily  Golden hour never gets old #travel #photo", fill="black", font_size=16)
    d.text((24, y + 86), "View all 87 comments", fill=(140, 140, 140), font_size=16)
    return c

def card(photo):
    c = Image.new("RGB", (720, 900), (21, 32, 43)); d = ImageDraw.Draw(c)
    d.ellipse((30, 30, 90, 90), fill=(29, 155, 240)); d.text((105, 38), "Daily Pictures", fill="white", font_size=22)
    d.text((105, 66), "@dailypics", fill=(136, 153, 166), font_size=16)
    d.text((30, 110), "You will not believe where this was taken. Thread below 👇", fill="white", font_size=20)
    d.text((30, 140), "Share if you have been there too!", fill="white", font_size=20)
    p = photo.resize((660, round(photo.height * 660 / photo.width))); c.paste(p, (30, 190))
    y = 190 + p.height + 20
    d.text((30, y), "12:04 PM · Dec 5, 2026 · 48.2K Views", fill=(136, 153, 166), font_size=16)
    d.line((30, y + 34, 690, y + 34), fill=(56, 68, 77), width=1)
    d.text((30, y + 48), "1,204 Reposts   356 Quotes   9,870 Likes", fill="white", font_size=16)
    return c

for name, fn, seed in (("post", post, 11), ("card", card, 12)):
    for p in pick(src, 20, seed):
        dst = out / name / p.relative_to(src).with_suffix(".jpg"); dst.parent.mkdir(parents=True, exist_ok=True)
        fn(Image.open(p).convert("RGB")).save(dst, quality=90)
print("written", sum(1 for _ in out.rglob("*.jpg")))
