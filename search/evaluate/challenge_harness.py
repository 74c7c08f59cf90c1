"""Runs a CGI-HRDC submission the way the challenge does, in an interpreter of its own.

    python -I challenge_harness.py SUBMISSION_DIR IMAGES_JSON RESULTS_JSONL

imports SUBMISSION_DIR/model.py, calls `model().load(SUBMISSION_DIR)`, then, for each path of
IMAGES_JSON (a JSON list), `predict(cv2.imread(path, 1))`. RESULTS_JSONL gets one line per image:
its path, the predicted class or the error, and the CPU and wall seconds of that `predict`.

This file imports nothing of fundus-search: the submission runs beside only what its own
environment holds. A submission that cannot be imported or loaded ends the run with exit 3 and
the reason as the last line on stderr.
"""

import importlib.util
import json
import sys
import time


def main(folder, images_file, results_file):
    import cv2

    sys.path.insert(0, folder)  # as the challenge does: model.py may import its neighbours
    try:
        started = time.process_time()
        spec = importlib.util.spec_from_file_location("model", f"{folder}/model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["model"] = module
        spec.loader.exec_module(module)
        submission = module.model()
        submission.load(folder)
        load_seconds = time.process_time() - started
    except Exception as exc:  # the submission's own code: anything can fail
        print(f"model.py does not load: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 3
    with open(images_file, encoding="utf-8") as f:
        paths = json.load(f)
    with open(results_file, "w", encoding="utf-8") as out:
        out.write(json.dumps({"load_cpu_seconds": load_seconds}) + "\n")
        for path in paths:
            row = {"path": path}
            image = cv2.imread(path, 1)
            if image is None:
                row["error"] = "cv2.imread cannot read it"
            else:
                cpu, wall = time.process_time(), time.perf_counter()
                try:
                    row["predicted"] = int(submission.predict(image))
                except Exception as exc:
                    row["error"] = f"predict: {type(exc).__name__}: {exc}".splitlines()[0]
                row["cpu_seconds"], row["wall_seconds"] = time.process_time() - cpu, time.perf_counter() - wall
            out.write(json.dumps(row) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
