// The img2img image and its inpainting mask: the image drawn on one canvas, the mask painted on a
// second one laid over it at the image's own size (so the mask matches the image pixel for pixel).
// Painted pixels are opaque; the mask sent is white where painted, black elsewhere.

const PAINT = "rgba(255, 64, 160, 1)";

export class MaskPainter {
  constructor(imageCanvas, maskCanvas) {
    this.image = imageCanvas;
    this.mask = maskCanvas;
    this.brush = 24;
    this.erasing = false;
    this.painted = false;
    this.last = null;
    this.mask.addEventListener("pointerdown", (e) => this.#down(e));
    this.mask.addEventListener("pointermove", (e) => this.#move(e));
    for (const kind of ["pointerup", "pointercancel", "pointerleave"]) {
      this.mask.addEventListener(kind, () => { this.last = null; });
    }
  }

  load(bitmap) {
    for (const c of [this.image, this.mask]) [c.width, c.height] = [bitmap.width, bitmap.height];
    this.image.getContext("2d").drawImage(bitmap, 0, 0);
    this.clear();
  }

  clear() {
    this.mask.getContext("2d").clearRect(0, 0, this.mask.width, this.mask.height);
    this.painted = false;
  }

  invert() {
    const ctx = this.mask.getContext("2d");
    const px = ctx.getImageData(0, 0, this.mask.width, this.mask.height);
    let any = false;
    for (let i = 0; i < px.data.length; i += 4) {
      const on = px.data[i + 3] < 128;
      [px.data[i], px.data[i + 1], px.data[i + 2], px.data[i + 3]] = on ? [255, 64, 160, 255] : [0, 0, 0, 0];
      any ||= on;
    }
    ctx.putImageData(px, 0, 0);
    this.painted = any;
  }

  #point(e) {
    const box = this.mask.getBoundingClientRect();
    return [(e.clientX - box.left) * (this.mask.width / box.width),
      (e.clientY - box.top) * (this.mask.height / box.height)];
  }

  #down(e) {
    e.preventDefault();
    this.mask.setPointerCapture?.(e.pointerId);
    this.last = this.#point(e);
    this.#stroke(this.last, this.last);
  }

  #move(e) {
    if (!this.last) return;
    const p = this.#point(e);
    this.#stroke(this.last, p);
    this.last = p;
  }

  #stroke(from, to) {
    const ctx = this.mask.getContext("2d");
    const scale = this.mask.width / this.mask.getBoundingClientRect().width || 1;
    ctx.globalCompositeOperation = this.erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = PAINT;
    ctx.lineWidth = this.brush * scale;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
    if (!this.erasing) this.painted = true;
  }

  imageBlob() { return new Promise((r) => this.image.toBlob(r, "image/png")); }

  // White where painted, black elsewhere, at the image's size.
  maskBlob() {
    const out = document.createElement("canvas");
    [out.width, out.height] = [this.mask.width, this.mask.height];
    const src = this.mask.getContext("2d").getImageData(0, 0, out.width, out.height);
    const ctx = out.getContext("2d");
    const px = ctx.createImageData(out.width, out.height);
    for (let i = 0; i < px.data.length; i += 4) {
      const v = src.data[i + 3] >= 128 ? 255 : 0;
      px.data[i] = px.data[i + 1] = px.data[i + 2] = v;
      px.data[i + 3] = 255;
    }
    ctx.putImageData(px, 0, 0);
    return new Promise((r) => out.toBlob(r, "image/png"));
  }
}
