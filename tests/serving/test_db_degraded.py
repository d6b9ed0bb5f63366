"""The personalizer with its DB unreachable (a port nobody listens on: a real refused connection):
the request path goes on at once on a schema made locally, and the first flush after the DB is
back reconciles that schema with the stored one, so the published sums are exactly those of a
personalizer that never lost its DB."""
import time

import numpy as np

from services import free_ports
from test_personalize import ARMS, C, M, PRODUCTS, _events, _serve

from bggen_assets.serving.personalize import Personalizer, ServingConfig, schema_for
from bggen_assets.serving.state import db_health


def _store(url: str, **kw):
    from resources.bandit_store import BanditStore
    from resources.metadata_db import MetadataDB

    return BanditStore(metadata_db=MetadataDB(url=url, **kw))


def _stored_elsewhere() -> dict:
    """The schema another replica stored first: the same values in another order, and one more."""
    wanted = schema_for(PRODUCTS)
    out = {k: list(reversed(v)) for k, v in reversed(list(wanted.items()))}
    out["country"] = ["zz", *out.get("country", [])]
    return out


def test_a_new_slot_with_the_db_down_serves_at_once_and_reconciles_on_recovery(tmp_path):
    config = ServingConfig(variant_shares={"bandit": 1.0}, seed=0)
    down = _store(f"mysql+mysqlconnector://root@127.0.0.1:{free_ports(1)[0]}/gone", retry_seconds=0.0,
                  connect_timeout=1)
    health = db_health(down)
    pers = Personalizer(config, down, health=health)
    events = _events(60, seed=3)

    t0 = time.perf_counter()
    choice = pers.choose("bandit", M, C, ARMS, PRODUCTS, events[0][0])
    assert time.perf_counter() - t0 < 2.0 and choice.theme in ARMS
    assert health.degraded and health.last_error
    _serve(pers, events)
    assert pers.flush() == 1  # refused at once while degraded; the deltas are kept

    # the DB is back (here: the replica's DB, where another replica stored the schema first)
    back = _store(f"sqlite:///{tmp_path / 'back.db'}")
    back.ensure_schema(M, C, _stored_elsewhere())
    pers.bandit_store, pers.health = back, None
    assert pers.flush() == 0
    slot = pers.slot(M, C, "linucb", ARMS, PRODUCTS)
    assert slot.schema.features == {k: tuple(v) for k, v in back.load_schema(M, C).items()}

    # the reference never lost its DB
    ref_store = _store(f"sqlite:///{tmp_path / 'ref.db'}")
    ref_store.ensure_schema(M, C, _stored_elsewhere())
    ref = Personalizer(config, ref_store)
    _serve(ref, events)
    assert ref.flush() == 0
    got, want = back.load_sums(M, C, "linucb"), ref_store.load_sums(M, C, "linucb")
    assert set(got) == set(want) == set(ARMS)
    for arm in ARMS:
        for g, w in zip(got[arm], want[arm]):
            np.testing.assert_allclose(g, w, atol=1e-9)
