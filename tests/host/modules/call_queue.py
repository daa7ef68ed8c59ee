"""The UI's call wrappers, as modules/call_queue.py does them (HOST_A1111.md §4).

- ``queue_lock`` is the one lock the UI and the API share (the host passes the same object
  to its Api), so a UI generation and an API job never run at once.
- ``wrap_gradio_gpu_call``: when args[0] is "task(...)" it registers the id as pending,
  then, holding the lock, runs state.begin(job=id), start_task, the call, record_results,
  finish_task and state.end().
- ``wrap_gradio_call`` clears skipped / interrupted / stopping_generation and job_count
  after every call; with ``add_stats`` it appends timing HTML to the *last* output, which
  must therefore be an HTML string. An exception becomes ``extra_outputs`` plus an error div.
"""

import html
import time
from functools import wraps

from modules import devices, errors, progress, shared
from modules.api.api import queue_lock  # one lock for UI and API, as the host passes it around


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)

    return f


def wrap_gradio_gpu_call(func, extra_outputs=None):
    @wraps(func)
    def f(*args, **kwargs):
        if args and type(args[0]) == str and args[0].startswith("task(") and args[0].endswith(")"):  # noqa: E721
            id_task = args[0]
            progress.add_task_to_queue(id_task)
        else:
            id_task = None

        with queue_lock:
            shared.state.begin(job=id_task)
            progress.start_task(id_task)
            try:
                res = func(*args, **kwargs)
                progress.record_results(id_task, res)
            finally:
                progress.finish_task(id_task)
            shared.state.end()
        return res

    return wrap_gradio_call(f, extra_outputs=extra_outputs, add_stats=True)


def wrap_gradio_call(func, extra_outputs=None, add_stats=False):
    @wraps(func)
    def f(*args, **kwargs):
        try:
            res = func(*args, **kwargs)
        finally:
            shared.state.skipped = False
            shared.state.interrupted = False
            shared.state.stopping_generation = False
            shared.state.job_count = 0
            shared.state.job = ""
        return res

    return wrap_gradio_call_no_job(f, extra_outputs, add_stats)


def wrap_gradio_call_no_job(func, extra_outputs=None, add_stats=False):
    @wraps(func)
    def f(*args, extra_outputs_array=extra_outputs, **kwargs):
        started = time.perf_counter()
        try:
            res = list(func(*args, **kwargs))
        except Exception as error:
            errors.report(f"Error completing request\nArguments: {args} {kwargs}"[:131072], exc_info=True)
            if extra_outputs_array is None:
                extra_outputs_array = [None, ""]
            message = html.escape(f"{type(error).__name__}: {error}")
            res = list(extra_outputs_array) + [f"<div class='error'>{message}</div>"]

        devices.torch_gc()
        if not add_stats:
            return tuple(res)

        elapsed = time.perf_counter() - started
        minutes, seconds = int(elapsed // 60), elapsed % 60
        elapsed_text = (f"{minutes} min. " if minutes else "") + f"{seconds:.1f} sec."
        # The last output is always HTML.
        res[-1] += (f"<div class='performance'><p class='time'>Time taken: <wbr>"
                    f"<span class='measurement'>{elapsed_text}</span></p></div>")
        return tuple(res)

    return f


__all__ = ["queue_lock", "wrap_gradio_call", "wrap_gradio_call_no_job", "wrap_gradio_gpu_call", "wrap_queued_call"]
