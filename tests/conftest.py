import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def aldp():
    from arbg.chem.systems import build_system

    return build_system("aldp")


@pytest.fixture(scope="session")
def aaa():
    from arbg.chem.systems import build_system

    return build_system("aaa")
