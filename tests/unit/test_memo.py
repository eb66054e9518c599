"""The bounded stores every cache of the app is made with (myapp/memo.py)."""

from myapp.memo import remember, remembered


def test_a_full_store_is_emptied_before_it_keeps_one_more():
    store = {}
    for n in range(3):
        assert remember(store, n, str(n), limit=3) == str(n)
    assert store == {0: "0", 1: "1", 2: "2"}
    remember(store, 3, "3", limit=3)
    assert store == {3: "3"}


def test_what_is_remembered_is_made_once_from_its_key():
    store, made = {}, []

    def make(key):
        made.append(key)
        return key.upper()

    assert remembered(store, "a", make, limit=10) == "A"
    assert remembered(store, "a", make, limit=10) == "A"
    assert made == ["a"]
