"""Authorization: the local list, the cache, and the decisions made without the CSMS.

The local list is authoritative (the CSMS put it there); the cache only remembers what the
CSMS said and is trusted offline only as far as the offline policy allows. Identifiers match
ignoring case, and by type where both sides give one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from cpagent.core.actions import Action, AuthCacheUpdated
from cpagent.core.model import AuthInfo, AuthStatus, CoreSettings, IdToken


class TokenTable:
    """Tokens with what is known of each, keyed ignoring case."""

    def __init__(self, entries: Iterable[tuple[IdToken, AuthInfo]] = ()) -> None:
        self._entries: dict[str, tuple[IdToken, AuthInfo]] = {}
        for token, info in entries:
            self.put(token, info)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(list(self._entries.values()))

    def get(self, token: IdToken) -> AuthInfo | None:
        found = self._entries.get(token.key)
        if found is None or not found[0].same_as(token):
            return None
        return found[1]

    def put(self, token: IdToken, info: AuthInfo) -> None:
        self._entries[token.key] = (token, info)

    def remove(self, token: IdToken) -> bool:
        found = self._entries.get(token.key)
        if found is None or not found[0].same_as(token):
            return False
        del self._entries[token.key]
        return True

    def clear(self) -> None:
        self._entries.clear()

    def tokens(self) -> list[IdToken]:
        return [token for token, _ in self._entries.values()]


class AuthCache:
    """Tokens the CSMS told us about, most recently used last, bounded in size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[IdToken, AuthInfo, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: IdToken) -> AuthInfo | None:
        found = self._entries.get(token.key)
        if found is None or not found[0].same_as(token):
            return None
        self._entries.move_to_end(token.key)
        return found[1]

    def learned_at(self, token: IdToken) -> float | None:
        found = self._entries.get(token.key)
        return found[2] if found else None

    def put(self, token: IdToken, info: AuthInfo, now: float | None = None) -> list[IdToken]:
        """Store an entry; returns the tokens evicted to make room."""
        self._entries[token.key] = (token, info, now)
        self._entries.move_to_end(token.key)
        evicted = []
        while len(self._entries) > self.capacity:
            evicted.append(self._entries.popitem(last=False)[1][0])
        return evicted

    def remove(self, token: IdToken) -> None:
        found = self._entries.get(token.key)
        if found is not None and found[0].same_as(token):
            del self._entries[token.key]

    def clear(self) -> None:
        self._entries.clear()

    def tokens(self) -> list[IdToken]:
        return [entry[0] for entry in self._entries.values()]


class Authorizer:
    """Knows what can be known of a token without asking, and keeps the cache current."""

    def __init__(self, settings: CoreSettings, emit: Callable[[Action], None], *,
                 cache: Iterable[tuple[IdToken, AuthInfo]] = (),
                 local_list: Iterable[tuple[IdToken, AuthInfo]] = ()) -> None:
        self.settings = settings
        self._emit = emit
        self.local_list = TokenTable(local_list)
        self.cache = AuthCache(settings.auth_cache_size)
        for token, info in cache:
            self.cache.put(token, info)

    def known(self, token: IdToken, now: float) -> AuthInfo | None:
        """What the charger knows of a token: the local list wins, the cache remembers."""
        if self.settings.local_list_enabled:
            listed = self.local_list.get(token)
            if listed is not None:
                return listed
        if not self.settings.auth_cache_enabled:
            return None
        info = self.cache.get(token)
        lifetime = self.settings.auth_cache_lifetime
        learned = self.cache.learned_at(token)
        if info is not None and lifetime is not None and learned is not None \
                and now - learned > lifetime:
            return None  # too old to be trusted (2.0.1 AuthCacheCtrlr.LifeTime)
        return info

    def pre_authorized(self, token: IdToken, now: float, evse_id: int | None) -> AuthInfo | None:
        """Online: an answer from what is known, when LocalPreAuthorize allows one."""
        if not self.settings.local_pre_authorize:
            return None
        known = self.known(token, now)
        return known if known is not None and known.valid_at(now, evse_id) else None

    def offline_verdict(self, token: IdToken, now: float, evse_id: int | None) -> AuthInfo:
        """Offline: what the policy decides of a token."""
        known = self.known(token, now)
        if known is not None:
            if self.settings.local_authorize_offline and known.valid_at(now, evse_id):
                return known
            return AuthInfo(AuthStatus.INVALID if known.status is AuthStatus.ACCEPTED
                            else known.status)
        if self.settings.allow_offline_unknown_id:
            return AuthInfo(AuthStatus.ACCEPTED)
        return AuthInfo(AuthStatus.UNKNOWN)

    def learn(self, token: IdToken, info: AuthInfo, now: float) -> None:
        """Every verdict of the CSMS refreshes the cache, but listed tokens are not cached."""
        if not self.settings.auth_cache_enabled or self.local_list.get(token) is not None:
            return
        self.cache.capacity = self.settings.auth_cache_size
        for evicted in self.cache.put(token, info, now):
            self._emit(AuthCacheUpdated(evicted, None))
        self._emit(AuthCacheUpdated(token, info))

    def replace_list(self, entries: Iterable[tuple[IdToken, AuthInfo]]) -> None:
        self.local_list = TokenTable(entries)
        self._forget_listed()

    def update_list(self, changes: Iterable[tuple[IdToken, AuthInfo | None]]) -> None:
        for token, info in changes:
            if info is None:
                self.local_list.remove(token)
            else:
                self.local_list.put(token, info)
        self._forget_listed()

    def _forget_listed(self) -> None:
        for token in self.local_list.tokens():
            if self.cache.get(token) is not None:
                self.cache.remove(token)
                self._emit(AuthCacheUpdated(token, None))

    def clear_cache(self) -> None:
        self.cache.clear()

