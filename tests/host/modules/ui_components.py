"""InputAccordion: a checkbox whose value drives an accordion (modules/ui_components.py).

As the hosts' ``InputAccordionImpl``: ``__init__`` carries gr.Checkbox's signature (``@wraps``),
which gradio 4 reads to build the component's config (without it the hidden checkbox loses its
elem_id and visibility on the page); the accordion has the ``input-accordion`` class their
javascript/inputAccordion.js looks for; and gradio 4 writes no ``.pyi`` for it (Forge's shim
skips classes so marked)."""

from functools import wraps

import gradio as gr


class InputAccordion(gr.Checkbox):
    global_index = 0
    webui_do_not_create_gradio_pyi_thank_you = True

    @wraps(gr.Checkbox.__init__)
    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id") or f"input-accordion-{InputAccordion.global_index}"
        InputAccordion.global_index += 1
        label = kwargs.get("label", "Accordion")
        kwargs_checkbox = {**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False}
        super().__init__(value, **kwargs_checkbox)
        self.accordion = gr.Accordion(label=label, open=kwargs.get("open", False), elem_id=self.accordion_id,
                                      elem_classes=["input-accordion"])

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"
