// VidGuide tab: the glue between its buttons and the WebUI's own progress bar.
//
// Generate and Resume run their Python function through the WebUI's wrap_gradio_gpu_call, whose
// first input is a task id. The functions below (gradio's `_js` hooks) make that id with the
// page's randomId(), start the page's requestProgress(id, ...) so the progress bar, the ETA and
// the live preview appear exactly as for txt2img, and pass the id on as the first input.
// Host globals are used only when they exist; every selector stays inside #tab_vidguide.
// Safe to load twice: the second run finds window.vidguide and does nothing.
(function() {
    "use strict";

    if (window.vidguide) return;

    var TAB_ID = "tab_vidguide";
    var TITLES = {
        vidguide_generate: "Start a job from the source video and run it here",
        vidguide_interrupt: "Stop after the current frame; every finished frame is kept and the job can be resumed from Jobs",
        vidguide_job_interrupt: "Stop after the current frame; every finished frame is kept",
        vidguide_skip: "Skip the current frame (it becomes the previous output moved by the flow)",
        vidguide_job_resume: "Continue the selected job from its last finished frame",
        vidguide_job_delete: "Delete the selected job and its files (not while it runs)",
        vidguide_mb_run: "Animate the image with Stable Video Diffusion; only the painted part moves",
        vidguide_mb_interrupt: "Stop the motion brush after the current sampling step; nothing is written",
        vidguide_ed_train: "Train on the source video and its prompt; the result is a trained artefact",
        vidguide_ed_resume: "Continue the selected interrupted training from its newest checkpoint",
        vidguide_ed_edit: "Edit the video (or generate, for Motion Inversion) with the edit prompt(s)",
        vidguide_ed_interrupt: "Stop after the current step: a training keeps its checkpoint, an edit writes nothing",
    };

    function root() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function tab() {
        return root().querySelector("#" + TAB_ID);
    }

    function element(id) {
        var scope = tab();
        return scope ? scope.querySelector("#" + id) : null;
    }

    function newTaskId() {
        if (typeof randomId === "function") return randomId();
        return "task(vidguide-" + Date.now().toString(36) + Math.random().toString(36).slice(2, 8) + ")";
    }

    function setRunning(running) {
        var scope = tab();
        if (!scope) return;
        scope.classList.toggle("vidguide-running", running);
        if (!running) scope.classList.remove("vidguide-interrupting");
    }

    // Starts the page's progress bar above `containerId`, live previews inside `previewId`.
    function followProgress(idTask, containerId, previewId) {
        var container = element(containerId);
        if (typeof requestProgress !== "function" || !container) return;
        setRunning(true);
        requestProgress(idTask, container, element(previewId), function() {
            setRunning(false);
        });
    }

    // A gradio `_js` hook: receives the event's input values (gradio 3 appends the outputs'),
    // returns them with the first one replaced by the task id.
    function submitter(containerId, previewId) {
        return function() {
            var values = Array.prototype.slice.call(arguments);
            var idTask = newTaskId();
            followProgress(idTask, containerId, previewId);
            values[0] = idTask;
            return values;
        };
    }

    window.vidguideSubmit = submitter("vidguide_results", "vidguide_preview");
    window.vidguideResume = submitter("vidguide_job_results", "vidguide_job_video");
    // Motion brush sub-tab: the same progress bar above its result column.
    window.vidguideMotionBrushSubmit = submitter("vidguide_mb_results", "vidguide_mb_result_video");
    // Edit sub-tab (Train, Resume training, Edit): the progress bar above its result column.
    window.vidguideEditSubmit = submitter("vidguide_ed_results", "vidguide_ed_result_video");

    window.vidguideInterrupting = function() {
        var scope = tab();
        if (scope && scope.classList.contains("vidguide-running")) scope.classList.add("vidguide-interrupting");
        return Array.prototype.slice.call(arguments);
    };

    // Delete asks first; an empty id makes the Python side delete nothing.
    window.vidguideConfirmDelete = function(jobId) {
        var values = Array.prototype.slice.call(arguments);
        if (jobId && typeof window.confirm === "function" && !window.confirm("Delete job " + jobId + " and its files?")) {
            values[0] = "";
        }
        return values;
    };

    // Button tooltips, once per rendered tab (the tab can be rendered again on "Reload UI").
    var decorated = new WeakSet();
    function decorate() {
        var scope = tab();
        if (!scope || decorated.has(scope) || !scope.querySelector("#vidguide_generate")) return;
        decorated.add(scope);
        Object.keys(TITLES).forEach(function(id) {
            var button = scope.querySelector("#" + id);
            if (button) button.title = TITLES[id];
        });
    }

    if (typeof onUiUpdate === "function") {
        onUiUpdate(decorate);
    } else if (typeof onUiLoaded === "function") {
        onUiLoaded(decorate);
    } else {
        document.addEventListener("DOMContentLoaded", function() {
            new MutationObserver(decorate).observe(document.body, {childList: true, subtree: true});
        });
    }

    window.vidguide = {followProgress: followProgress, newTaskId: newTaskId};
})();
