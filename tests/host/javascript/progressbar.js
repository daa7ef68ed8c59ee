// Stand-in for the WebUI's progress bar (javascript/progressbar.js), written for the tests from
// HOST_A1111.md §4: randomId() makes a "task(...)" id; requestProgress() polls
// POST ./internal/progress with it, puts a progress bar (div.progressDiv > div.progress, showing
// the percentage and state.textinfo) just before progressbarContainer, shows live previews in a
// div.livePreview inside `gallery`, and when the task is over removes both and calls atEnd().
(function() {
    "use strict";

    var POLL_MS = 300;

    window.opts = window.opts || {live_preview_refresh_period: POLL_MS, show_progressbar: true};

    window.randomId = function() {
        function part() { return Math.random().toString(36).slice(2, 7); }
        return "task(" + part() + part() + part() + ")";
    };

    function post(body, onAnswer, onFailure) {
        fetch("./internal/progress", {
            method: "POST",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify(body),
        }).then(function(response) {
            if (!response.ok) throw new Error("HTTP " + response.status);
            return response.json();
        }).then(onAnswer, function(error) {
            console.error("stand-in progress:", error);
            onFailure();
        });
    }

    function formatEta(seconds) {
        return seconds > 60 ? Math.floor(seconds / 60) + "m " + Math.floor(seconds % 60) + "s" : Math.floor(seconds) + "s";
    }

    window.requestProgress = function(idTask, progressbarContainer, gallery, atEnd, onProgress, inactivityTimeout) {
        if (inactivityTimeout === undefined) inactivityTimeout = 40;
        var started = Date.now();
        var wasActive = false;
        var parent = progressbarContainer.parentNode;
        var period = (window.opts && window.opts.live_preview_refresh_period) || POLL_MS;

        var bar = document.createElement("div");
        bar.className = "progressDiv";
        var inner = document.createElement("div");
        inner.className = "progress";
        bar.appendChild(inner);
        parent.insertBefore(bar, progressbarContainer);

        var preview = null;

        function finish() {
            if (!bar) return;
            parent.removeChild(bar);
            if (gallery && preview && preview.parentNode) preview.parentNode.removeChild(preview);
            bar = null;
            if (atEnd) atEnd();
        }

        function pollProgress() {
            post({id_task: idTask, live_preview: false}, function(answer) {
                if (!bar) return;
                if (answer.completed) {
                    finish();
                    return;
                }
                var text = "";
                inner.style.width = ((answer.progress || 0) * 100) + "%";
                if (answer.progress > 0) text = ((answer.progress || 0) * 100).toFixed(0) + "%";
                if (answer.eta) text += " ETA: " + formatEta(answer.eta);
                if (answer.textinfo && answer.textinfo.indexOf("\n") === -1) text = answer.textinfo + " " + text;
                inner.textContent = text;
                if (answer.active) wasActive = true;
                if (!answer.active && wasActive) {
                    finish();
                    return;
                }
                if ((Date.now() - started) / 1000 > inactivityTimeout && !answer.queued && !answer.active) {
                    finish();
                    return;
                }
                if (onProgress) onProgress(answer);
                setTimeout(pollProgress, period);
            }, finish);
        }

        function pollPreview(idLivePreview) {
            post({id_task: idTask, id_live_preview: idLivePreview}, function(answer) {
                if (!bar) return;
                if (answer.live_preview) {
                    var image = new Image();
                    image.onload = function() {
                        if (!bar) return;
                        if (!preview) {
                            preview = document.createElement("div");
                            preview.className = "livePreview";
                            gallery.insertBefore(preview, gallery.firstElementChild);
                        }
                        preview.appendChild(image);
                        if (preview.childElementCount > 2) preview.removeChild(preview.firstElementChild);
                    };
                    image.src = answer.live_preview;
                }
                setTimeout(function() { pollPreview(answer.id_live_preview); }, period);
            }, finish);
        }

        pollProgress();
        if (gallery) pollPreview(0);
    };
})();
