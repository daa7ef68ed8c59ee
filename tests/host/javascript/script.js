// Stand-in for the WebUI's script.js: the page-level helpers extension scripts rely on.
// Written for the tests from HOST_A1111.md §4 (not a copy of the host's file):
//   gradioApp()       the root to query (the <gradio-app> element's shadow root, or the document)
//   onUiLoaded(cb)    cb() once, when the tabs have been rendered
//   onUiUpdate(cb)    cb(mutations) after every change of the page's DOM
//   onUiTabChange(cb) cb() when the selected top-level tab changes
//   updateInput(el)   an "input" event on el, so that gradio takes a value set by a script
(function() {
    "use strict";

    var loadedCallbacks = [];
    var updateCallbacks = [];
    var tabChangeCallbacks = [];
    var loaded = false;
    var selectedTab = null;

    window.gradioApp = function() {
        var elements = document.getElementsByTagName("gradio-app");
        var root = elements.length ? elements[0] : document;
        if (root !== document && !root.getElementById) {
            root.getElementById = function(id) { return document.getElementById(id); };
        }
        return root.shadowRoot ? root.shadowRoot : root;
    };

    // updateInput(target): tells gradio an input's value was changed by a script ("input" event).
    window.updateInput = function(target) {
        var event = new Event("input", {bubbles: true});
        Object.defineProperty(event, "target", {value: target});
        target.dispatchEvent(event);
    };

    window.onUiLoaded = function(callback) { loadedCallbacks.push(callback); };
    window.onUiUpdate = function(callback) { updateCallbacks.push(callback); };
    window.onUiTabChange = function(callback) { tabChangeCallbacks.push(callback); };

    function run(callbacks, argument) {
        callbacks.forEach(function(callback) {
            try {
                callback(argument);
            } catch (error) {
                console.error("stand-in host: a UI callback failed", error);
            }
        });
    }

    function currentTab() {
        var button = gradioApp().querySelector("#tabs > .tab-nav > button.selected");
        return button ? button.textContent.trim() : null;
    }

    var observer = new MutationObserver(function(mutations) {
        if (!loaded && gradioApp().querySelector("#tabs")) {
            loaded = true;
            run(loadedCallbacks);
        }
        run(updateCallbacks, mutations);
        var tab = currentTab();
        if (tab !== selectedTab) {
            selectedTab = tab;
            run(tabChangeCallbacks);
        }
    });

    document.addEventListener("DOMContentLoaded", function() {
        observer.observe(gradioApp(), {childList: true, subtree: true});
    });
})();
