from fedcare.core.seeds import SeedStream


def test_same_key_gives_same_draws_and_different_keys_differ():
    seeds = SeedStream(42)
    a = seeds.generator("batches", 3, 7).integers(0, 1_000_000, size=5)
    b = SeedStream(42).generator("batches", 3, 7).integers(0, 1_000_000, size=5)
    c = seeds.generator("batches", 3, 8).integers(0, 1_000_000, size=5)
    d = seeds.generator("sampling", 3, 7).integers(0, 1_000_000, size=5)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    assert a.tolist() != d.tolist()


def test_draws_do_not_depend_on_order_of_requests():
    seeds = SeedStream(1)
    first = seeds.integer_seed("init")
    for site in range(100):
        seeds.generator("batches", 0, site).random()
    assert seeds.integer_seed("init") == first
