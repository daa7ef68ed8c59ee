"""Infotext: how generation parameters are written under images and pasted back into the UI.

- values containing "," ":" or a newline are written JSON-quoted;
- the last line holds "Key: value" pairs (a line with fewer than 3 such pairs is part of the
  prompt); "WxH" values become "<key>-1" / "<key>-2";
- paste: for each (component, key) a script lists in ``infotext_fields``, the key's value (or a
  callable's result on the whole dict) is converted to the component's current value type.
"""

import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(text: str) -> dict:
    result = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, last_line = text.strip().split("\n")
    if len(re_param.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for key, value in re_param.findall(last_line):
        if value[:1] == '"' and value[-1:] == '"':
            value = unquote(value)
        size = re_imagesize.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    result["Prompt"] = prompt
    result["Negative prompt"] = negative_prompt
    return result


def pasted_values(paste_fields, infotext: str) -> list:
    """What pasting ``infotext`` sets each field to (None: left unchanged), as the host's paste does."""
    params = parse_generation_parameters(infotext)
    values = []
    for component, key in paste_fields:
        value = key(params) if callable(key) else params.get(key, None)
        if value is None:
            values.append(None)
            continue
        if isinstance(value, dict) and "__type__" in value:  # a gr.update(...)
            values.append(value.get("value"))
            continue
        value_type = type(component.value)
        try:
            if value_type == bool and value == "False":
                value = False
            elif value_type == int:
                value = float(value)
            else:
                value = value_type(value)
        except Exception:
            value = None
        values.append(value)
    return values
