// Stand-in for the WebUI's javascript/inputAccordion.js (the same file in A1111 v1.10.1 and Forge),
// written for the tests from what it does: an InputAccordion is a hidden checkbox (#<id>-checkbox)
// and an accordion (#<id>); a visible checkbox is added to the accordion's label, and opening the
// accordion checks it (until the user clicks the checkbox itself); the hidden gradio checkbox follows
// through updateInput(), so the script's "enabled" arg is what the user sees.
(function() {
    "use strict";

    function setup(accordion) {
        var labelWrap = accordion.querySelector(".label-wrap");
        var gradioCheckbox = gradioApp().querySelector("#" + accordion.id + "-checkbox input");
        if (!labelWrap || !gradioCheckbox || accordion.visibleCheckbox) return;
        var span = labelWrap.querySelector("span") || labelWrap;
        var linked = true;

        function isOpen() { return labelWrap.classList.contains("open"); }

        var visibleCheckbox = document.createElement("INPUT");
        visibleCheckbox.type = "checkbox";
        visibleCheckbox.checked = isOpen();
        visibleCheckbox.id = accordion.id + "-visible-checkbox";
        visibleCheckbox.className = gradioCheckbox.className + " input-accordion-checkbox";
        span.insertBefore(visibleCheckbox, span.firstChild);
        accordion.visibleCheckbox = visibleCheckbox;

        accordion.onVisibleCheckboxChange = function() {
            if (linked && isOpen() !== visibleCheckbox.checked) labelWrap.click();
            gradioCheckbox.checked = visibleCheckbox.checked;
            updateInput(gradioCheckbox);
        };
        new MutationObserver(function() {
            accordion.classList.toggle("input-accordion-open", isOpen());
            if (linked) {
                visibleCheckbox.checked = isOpen();
                accordion.onVisibleCheckboxChange();
            }
        }).observe(labelWrap, {attributes: true, attributeFilter: ["class"]});
        visibleCheckbox.addEventListener("click", function(event) {
            linked = false;
            event.stopPropagation();
        });
        visibleCheckbox.addEventListener("input", accordion.onVisibleCheckboxChange);
    }

    window.inputAccordionChecked = function(id, checked) {
        var accordion = gradioApp().getElementById(id);
        accordion.visibleCheckbox.checked = checked;
        accordion.onVisibleCheckboxChange();
    };

    onUiLoaded(function() {
        // The host marks them with the "input-accordion" class; the stand-in's InputAccordion may not:
        // an accordion with a "<id>-checkbox" next to it is one too.
        gradioApp().querySelectorAll(".input-accordion, [id$='-checkbox']").forEach(function(element) {
            var id = element.classList.contains("input-accordion") ? element.id : element.id.replace(/-checkbox$/, "");
            var accordion = id && gradioApp().querySelector("#" + id);
            if (accordion && accordion.querySelector(".label-wrap")) setup(accordion);
        });
    });
})();
