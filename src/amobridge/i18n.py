"""The languages of the pages a browser sees (the service's and the sandbox's), and their texts.

A page speaks one language, chosen per request by :func:`choose_language`: an explicit
``?lang=ru|en`` first, then a language the flow stored when it started, then the browser's
``Accept-Language`` (q-values honoured; Russian, Ukrainian and Belarusian read Russian, English
reads English), and Russian when nothing decides.

:data:`TEXTS` is the catalogue: one dict per language, the same keys in each (a test checks).
A text may hold markup of its own and ``{name}`` placeholders; :class:`Texts` fills them with
escaped values. Proper names keep their spelling in both languages: amoCRM, amobridge.

A leaf module: it imports nothing of amobridge, so the service and the sandbox both use it.
"""

from __future__ import annotations

from typing import Literal

from markupsafe import Markup

Lang = Literal["ru", "en"]
LANGUAGES: tuple[Lang, ...] = ("ru", "en")
DEFAULT_LANGUAGE: Lang = "ru"

# Primary language subtags (RFC 5646) and the page language each reads.
_READS_AS: dict[str, Lang] = {"ru": "ru", "uk": "ru", "be": "ru", "en": "en"}


def parse_language(value: str | None) -> Lang | None:
    """``ru``/``en`` (any case, a region allowed: ``en-GB``); None for anything else."""
    if not value:
        return None
    primary = value.strip().replace("_", "-").split("-", 1)[0].lower()
    return _READS_AS.get(primary) if primary in ("ru", "en") else None


def from_accept_language(header: str | None) -> Lang | None:
    """The page language a browser's ``Accept-Language`` asks for first; None if none fits."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = -1.0  # a malformed weight: the entry is ignored
        if tag.strip() and 0 < quality <= 1:
            ranked.append((-quality, position, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        found = _READS_AS.get(tag.split("-", 1)[0])
        if found is not None:
            return found
    return None


def preferred_language(query: str | None, accept_language: str | None) -> Lang | None:
    """What a request says about its language (``?lang=``, then ``Accept-Language``), or None
    when it says nothing that fits — what a flow keeps for the pages at its end."""
    return parse_language(query) or from_accept_language(accept_language)


def choose_language(
    query: str | None = None,
    accept_language: str | None = None,
    *,
    stored: str | None = None,
) -> Lang:
    """The language of one page: ``?lang=``, the flow's stored choice, ``Accept-Language``,
    else Russian."""
    return (
        parse_language(query)
        or parse_language(stored)
        or from_accept_language(accept_language)
        or DEFAULT_LANGUAGE
    )


class Texts:
    """One language's texts as templates use them: ``t("success.body", host=host)`` is markup,
    the values escaped; :meth:`plain` gives the bare string (for a script's JSON)."""

    def __init__(self, lang: str) -> None:
        self.lang: Lang = parse_language(lang) or DEFAULT_LANGUAGE
        self._texts = TEXTS[self.lang]

    def __call__(self, key: str, **values: object) -> Markup:
        return Markup(self._texts[key]).format(**values)  # noqa: S704 - the catalogue is ours

    def plain(self, key: str) -> str:
        return self._texts[key]


TEXTS: dict[Lang, dict[str, str]] = {
    "ru": {
        # The service's pages after amoCRM's consent.
        "success.title": "amoCRM подключён!",
        "success.body": "Аккаунт amoCRM <strong>{host}</strong> подключён.",
        "success.close": "Это окно можно закрыть.",
        "success.returning": "Сейчас вы вернётесь в приложение.",
        "success.continue": "Продолжить",
        "error.page_title": "amoCRM: не удалось подключить",
        "error.title": "Не удалось подключить amoCRM",
        "error.what_to_do": "Что делать:",
        "error.details": "Подробности:",
        "error.retry": "Попробовать снова",
        "error.code": "Код ошибки:",
        "deeplink.returning": "Возвращаемся в приложение…",
        "deeplink.open": "Открыть приложение",
        "deeplink.hint": "Если ничего не происходит, нажмите кнопку.",
        # The website-button page.
        "connect.title": "Подключить amoCRM",
        "connect.lead": "Нажмите кнопку, выберите аккаунт и разрешите доступ.",
        "connect.button": "Подключить amoCRM",
        "connect.denied": "Доступ не предоставлен ({error}).",
        "connect.ttl": "Ссылка действует {minutes} мин.",
        # The service's index page.
        "index.lead": "Подключает аккаунты amoCRM к вашему приложению и следит, чтобы они "
        "оставались подключёнными.",
        "index.docs": "справочник по API",
        "index.openapi": "описание API в формате OpenAPI",
        "index.health": "жив ли сервис",
        "index.ready": "готова ли база данных",
        "index.connect": "подключить аккаунт (ключ приложения или токен пользователя)",
        "index.status": "состояние подключения",
        "index.version": "Версия {version}.",
        # The sandbox (a local amoCRM).
        "sandbox.brand": "песочница",
        "sandbox.index.title": "Песочница amobridge",
        "sandbox.index.lead": "Локальный amoCRM для тестов и демонстраций: вход через OAuth, "
        "API v4, вебхуки, ограничения частоты запросов, сбои.",
        "sandbox.index.health": "работает ли песочница и сколько в ней аккаунтов",
        "sandbox.index.accounts": "аккаунты, пользователи, воронки (управляющий API; может "
        "потребоваться управляющий токен)",
        "sandbox.index.integrations": "интеграции и их адреса возврата",
        "sandbox.index.consent": "страница согласия",
        "sandbox.index.api": "API, с заголовком <code>Host: {{subdomain}}.amocrm.ru</code>",
        "sandbox.index.docs": "Все маршруты описаны в <code>docs/sandbox.md</code>.",
        "sandbox.consent.page_title": "Предоставить доступ — {name}",
        "sandbox.consent.install": "Установить интеграцию «{name}»",
        "sandbox.consent.install_lead": "В выбранном аккаунте будет создана новая интеграция, "
        "и она получит доступ:",
        "sandbox.consent.request": "Интеграция «{name}» запрашивает доступ",
        "sandbox.consent.request_lead": "Интеграция получит доступ:",
        "sandbox.consent.account": "Аккаунт",
        "sandbox.consent.no_accounts": "В песочнице нет аккаунтов. Создайте аккаунт: "
        "<code>POST /_sandbox/accounts</code>.",
        "sandbox.consent.allow": "Разрешить",
        "sandbox.consent.deny": "Отказать",
        "sandbox.scope.crm": "Доступ к данным аккаунта: сделки, контакты, компании, задачи",
        "sandbox.scope.files": "Доступ к файлам",
        "sandbox.scope.files_delete": "Удаление файлов",
        "sandbox.scope.notifications": "Уведомления в аккаунте",
        "sandbox.scope.push_notifications": "Пуш-уведомления",
        "sandbox.finish.granted": "Доступ предоставлен",
        "sandbox.finish.denied": "Доступ не предоставлен",
        "sandbox.finish.returning": "Возвращаемся на сайт интеграции…",
        "sandbox.finish.continue": "Продолжить",
        "sandbox.error.no_integration": "Интеграция не найдена",
        "sandbox.error.no_integration_why": "Интеграция с таким client_id не существует. "
        "Проверьте параметр client_id.",
        "sandbox.error.integration_deleted": "Интеграция была удалена.",
        "sandbox.error.bad_button": "Некорректная кнопка",
        "sandbox.error.bad_request": "Некорректный запрос",
        "sandbox.error.no_client_id": "Не передан параметр client_id.",
        "sandbox.error.stale": "Страница устарела",
        "sandbox.error.stale_why": "Эта страница согласия уже использована или устарела. "
        "Откройте её заново.",
        "sandbox.error.no_account": "Аккаунт не выбран",
        "sandbox.error.no_account_why": "Выберите аккаунт из списка.",
        "sandbox.error.install_failed": "Не удалось установить интеграцию",
        "sandbox.error.not_found": "Страница не найдена",
        "sandbox.error.not_found_why": "Такой страницы нет.",
        "sandbox.demo.title": "Возврат демо-интеграции",
        "sandbox.demo.denied": "Доступ не предоставлен",
        "sandbox.demo.code": "Код авторизации получен",
        "sandbox.demo.lead": "Сюда amoCRM возвращает пользователя после согласия (адрес "
        "возврата демо-интеграции).",
        "sandbox.demo.exchange": "Обменяйте код на токены в течение 20 минут, на домене аккаунта.",
        "sandbox.demo.unknown_account": "Аккаунта {referer} в песочнице нет.",
        "sandbox.demo.secret": "Секрет интеграции: <code>GET {base}/_sandbox/integrations</code>.",
    },
    "en": {
        "success.title": "amoCRM is connected!",
        "success.body": "The amoCRM account <strong>{host}</strong> is connected.",
        "success.close": "You can close this window.",
        "success.returning": "Taking you back to the app in a few seconds.",
        "success.continue": "Continue",
        "error.page_title": "amoCRM: not connected",
        "error.title": "amoCRM could not be connected",
        "error.what_to_do": "What to do:",
        "error.details": "Details:",
        "error.retry": "Try again",
        "error.code": "Error code:",
        "deeplink.returning": "Returning to the app…",
        "deeplink.open": "Open the app",
        "deeplink.hint": "If nothing happens, tap the button.",
        "connect.title": "Connect amoCRM",
        "connect.lead": "Press the button, choose your account and allow access.",
        "connect.button": "Connect amoCRM",
        "connect.denied": "Access was not granted ({error}).",
        "connect.ttl": "This link is valid for {minutes} minutes.",
        "index.lead": "Connects amoCRM accounts to your application and keeps them connected.",
        "index.docs": "the API reference",
        "index.openapi": "the OpenAPI document",
        "index.health": "is the service up",
        "index.ready": "is the database ready",
        "index.connect": "connect an account (an app key or a user's token)",
        "index.status": "connection status",
        "index.version": "Version {version}.",
        "sandbox.brand": "sandbox",
        "sandbox.index.title": "amobridge sandbox",
        "sandbox.index.lead": "A local amoCRM for tests and demos: OAuth, API v4, webhooks, "
        "rate limits, faults.",
        "sandbox.index.health": "is it up, how many accounts",
        "sandbox.index.accounts": "accounts, users, pipelines (control API; may need the "
        "control token)",
        "sandbox.index.integrations": "integrations and their redirect URIs",
        "sandbox.index.consent": "the consent page",
        "sandbox.index.api": "the API, with <code>Host: {{subdomain}}.amocrm.ru</code>",
        "sandbox.index.docs": "Every route is described in <code>docs/sandbox.md</code>.",
        "sandbox.consent.page_title": "Grant access — {name}",
        "sandbox.consent.install": "Install the integration «{name}»",
        "sandbox.consent.install_lead": "A new integration will be created in the chosen "
        "account, with access to:",
        "sandbox.consent.request": "The integration «{name}» asks for access",
        "sandbox.consent.request_lead": "The integration will get access to:",
        "sandbox.consent.account": "Account",
        "sandbox.consent.no_accounts": "The sandbox has no accounts. Create one: "
        "<code>POST /_sandbox/accounts</code>.",
        "sandbox.consent.allow": "Allow",
        "sandbox.consent.deny": "Deny",
        "sandbox.scope.crm": "Account data: leads, contacts, companies, tasks",
        "sandbox.scope.files": "Files",
        "sandbox.scope.files_delete": "Deleting files",
        "sandbox.scope.notifications": "Notifications in the account",
        "sandbox.scope.push_notifications": "Push notifications",
        "sandbox.finish.granted": "Access granted",
        "sandbox.finish.denied": "Access not granted",
        "sandbox.finish.returning": "Returning to the integration's site…",
        "sandbox.finish.continue": "Continue",
        "sandbox.error.no_integration": "Integration not found",
        "sandbox.error.no_integration_why": "No integration has this client_id. Check the "
        "client_id parameter.",
        "sandbox.error.integration_deleted": "The integration was deleted.",
        "sandbox.error.bad_button": "Invalid button",
        "sandbox.error.bad_request": "Bad request",
        "sandbox.error.no_client_id": "The client_id parameter is missing.",
        "sandbox.error.stale": "This page has expired",
        "sandbox.error.stale_why": "This consent page was already used or has expired. Open it "
        "again.",
        "sandbox.error.no_account": "No account chosen",
        "sandbox.error.no_account_why": "Choose an account from the list.",
        "sandbox.error.install_failed": "The integration could not be installed",
        "sandbox.error.not_found": "Page not found",
        "sandbox.error.not_found_why": "There is no such page.",
        "sandbox.demo.title": "Demo integration's landing page",
        "sandbox.demo.denied": "Access not granted",
        "sandbox.demo.code": "Authorization code received",
        "sandbox.demo.lead": "amoCRM sends the user back here after consent (the demo "
        "integration's redirect URI).",
        "sandbox.demo.exchange": "Exchange the code for tokens within 20 minutes, on the "
        "account's domain.",
        "sandbox.demo.unknown_account": "The sandbox has no account {referer}.",
        "sandbox.demo.secret": "The integration's secret: "
        "<code>GET {base}/_sandbox/integrations</code>.",
    },
}
