from PIL import Image


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    """Mode 0 ("Just resize") is the one the stand-in needs."""
    if im.size == (width, height):
        return im
    return im.resize((width, height), Image.LANCZOS)


def flatten(img, bgcolor):
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")
