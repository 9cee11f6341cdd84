"""Plays the kubelet for a backup set's documents Job in `make demo` (no kubelet runs
there): runs the Job's own container command (the operator's binary, the Job's arguments
and environment) with /sites standing for a local directory, then reports the pod's end
with the command's summary as its termination message, as a kubelet would.

Usage: demo-documents-job.py <binary> <namespace> <job> <sites dir> <scratch dir>
"""
import json
import os
import subprocess
import sys
import time


def kubectl(*args, stdin=None):
    return subprocess.run(["kubectl", *args], check=True, capture_output=True,
                          text=True, input=stdin).stdout


def main():
    binary, namespace, job_name, sites, scratch = sys.argv[1:6]
    job = json.loads(kubectl("get", "job", "-n", namespace, job_name, "-o", "json"))
    pod = ""
    for _ in range(120):
        pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l",
                                  f"job-name={job_name}", "-o", "json"))["items"]
        if pods:
            pod = pods[0]["metadata"]["name"]
            break
        time.sleep(0.5)
    if not pod:
        sys.exit(f"no pod for Job {job_name}")
    container = job["spec"]["template"]["spec"]["containers"][0]
    os.makedirs(os.path.join(scratch, "tmp"), exist_ok=True)
    summary_file = os.path.join(scratch, "termination-log")
    places = {"/sites": sites, "/tmp": os.path.join(scratch, "tmp"),
              "/dev/termination-log": summary_file}
    args = [places.get(a, a) for a in container["args"]]
    env = dict(os.environ, POD_NAME=pod, S3_PATH_STYLE="true")
    env.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
    done = subprocess.run([binary, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the Job's command failed: {done.stdout}{done.stderr}")
    with open(summary_file) as f:
        summary = f.read()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": container["name"], "image": container["image"], "imageID": "",
        "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": summary,
                                 "startedAt": now, "finishedAt": now}}}]}}
    kubectl("patch", "pod", "-n", namespace, pod, "--subresource=status", "--type=merge",
            "-p", json.dumps(status))
    print(f"kubelet (played): {pod} of {job_name} ran `{' '.join(container['args'][:2])}` "
          f"over {sites} and exited 0: {summary.strip()}")


if __name__ == "__main__":
    main()
