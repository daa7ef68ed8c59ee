"""Run one VidGuide job on the stand-in host in its own process (for the kill -9 test).

    python tests/run_job_process.py DATA_PATH JOB_ID SECONDS_PER_FRAME
"""

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "host"), str(REPO / "tests"), str(REPO)]


def main() -> None:
    data_path, job_id, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    import torch

    torch.set_num_threads(1)
    from modules import paths_internal

    paths_internal.data_path = data_path
    from host_session import HostSession

    HostSession.start(REPO)
    from lib_vidguide.webui import jobs_host

    job = jobs_host.job_store().get(job_id)

    def slow(event, pass_number):
        time.sleep(pause)

    jobs_host.run_job_here(job, on_frame=slow)


if __name__ == "__main__":
    main()
