"""The real node's pure parts: teardown order of mounts and the settings this VM needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

from modeldeploy_localcluster import node


def test_mounts_under_lists_only_ours_deepest_first() -> None:
    mounts = "\n".join(
        [
            "/dev/vda / ext4 rw 0 0",
            "shm /tmp/wd/containerd/state/a/shm tmpfs rw 0 0",
            "overlay /tmp/wd/containerd/state/a/rootfs overlay rw 0 0",
            "tmpfs /tmp/wd/kubelet/pods/x/volumes/token tmpfs rw 0 0",
            "tmpfs /tmp/wd-other/kubelet tmpfs rw 0 0",
            "proc /tmp/wd/containerd/state/a/rootfs/proc proc rw 0 0",
        ]
    )
    points = node.mounts_under(mounts, Path("/tmp/wd"))
    assert "/tmp/wd-other/kubelet" not in points and "/" not in points
    assert len(points) == 4
    # A mount inside another is unmounted before it.
    assert points.index("/tmp/wd/containerd/state/a/rootfs/proc") < points.index(
        "/tmp/wd/containerd/state/a/rootfs"
    )


def test_containerd_config_carries_the_settings_this_vm_needs(tmp_path: Path) -> None:
    config = tomllib.loads(node.containerd_config(tmp_path))
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    assert config["version"] == 3
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert runtime["cni"]["bin_dirs"] == [node.CNI_BIN_DIR]
    images = config["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == node.PAUSE_IMAGE
    # Everything lives in the run's own directory, not in /var/lib/containerd.
    assert config["root"].startswith(str(tmp_path))


def test_kubelet_accepts_cgroup_v1_and_uses_the_node_dns(tmp_path: Path) -> None:
    config = node.kubelet_config(tmp_path, "/modeldeploy-abc")
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["clusterDNS"] == [node.NODE_IP]
    assert config["podLogsDir"].startswith(str(tmp_path))


def test_each_node_has_a_cgroup_root_of_its_own(tmp_path: Path) -> None:
    # Two kubelets sharing /kubepods remove each other's pod cgroups (measured: the other node's
    # sandboxes died with "cgroup deleted" and "lstat /proc/PID/ns/ipc").
    assert node.kubelet_config(tmp_path, "/modeldeploy-abc")["cgroupRoot"] == "/modeldeploy-abc"
