"""What can go wrong while connecting, in words for the person in front of the callback page:
:data:`PROBLEMS` in English (also what the audit log and API errors say), :data:`PROBLEMS_RU`
in Russian, the same keys; :func:`problem_texts` picks a page's language."""

from __future__ import annotations

from dataclasses import dataclass

# What each failure means for the person in front of the callback page: (title, why, fix).
PROBLEMS: dict[str, tuple[str, str, str]] = {
    "access_denied": (
        "Access was not granted",
        "You pressed «Deny» on amoCRM's page, so amoCRM sent no authorization code.",
        "Start the connection again and press «Allow».",
    ),
    "state_missing": (
        "The link is incomplete",
        "amoCRM's answer carries no state, so it cannot be matched to a connection request.",
        "Start the connection again from your application.",
    ),
    "state_forged": (
        "The link is not valid",
        "The state in the link was not issued by this service or was altered.",
        "Start the connection again from your application.",
    ),
    "state_unknown": (
        "The link is not valid",
        "This service has no record of the connection request (it may have been purged).",
        "Start the connection again from your application.",
    ),
    "state_expired": (
        "The link has expired",
        "A connection request is valid for 10 minutes, and this one is older.",
        "Start the connection again and finish it within 10 minutes.",
    ),
    "state_used": (
        "The link was already used",
        "This connection request has already been completed: in another browser, or too long "
        "ago to show its result here.",
        "If the account is not connected, start the connection again.",
    ),
    "state_wrong_browser": (
        "The connection was started in another browser",
        "This connection request belongs to the browser that opened the connection link, and "
        "this browser is not that one — so amoCRM's answer is not accepted here (otherwise "
        "whoever got hold of the link could tie your account to an amoCRM account of theirs).",
        "Finish the connection in the browser where you started it, or start it again in this "
        "browser.",
    ),
    "state_link_used": (
        "The connection link was already opened",
        "A connection link works once: the browser that opened it first is the one that can "
        "finish the connection.",
        "If amoCRM's page is open in that browser, continue there; otherwise start the "
        "connection again.",
    ),
    "code_missing": (
        "No authorization code",
        "amoCRM's answer has no code.",
        "Start the connection again.",
    ),
    "bad_referer": (
        "Unknown amoCRM account",
        "amoCRM's answer does not name a valid account domain.",
        "Start the connection again; use your account's own address, e.g. acme.amocrm.ru.",
    ),
    "secrets_missing": (
        "The integration's keys did not arrive",
        "amoCRM creates a new integration for the website button and sends its keys to this "
        "service first; they were not received (or took longer than 10 minutes).",
        "Start the connection again. If it keeps failing, check that amoCRM can reach "
        "the secrets URL (POST /amocrm/secrets) through your proxy.",
    ),
    "not_configured": (
        "The integration is not configured",
        "No amoCRM client id/secret is configured for this service.",
        "Set AMOBRIDGE_AMO__CLIENT_ID and AMOBRIDGE_AMO__CLIENT_SECRET, or use the website button.",
    ),
    "exchange_failed": (
        "amoCRM refused the authorization code",
        "The code could not be exchanged for tokens.",
        "Start the connection again (a code lives 20 minutes and works once). If amoCRM says "
        "the redirect URI is not associated with the client, make AMOBRIDGE_AMO__REDIRECT_URI "
        "equal the integration's redirect URI exactly.",
    ),
    "amocrm_unavailable": (
        "amoCRM did not answer",
        "The token exchange failed on the network or amoCRM returned a server error.",
        "Try again in a minute.",
    ),
}


PROBLEMS_RU: dict[str, tuple[str, str, str]] = {
    "access_denied": (
        "Доступ не предоставлен",
        "На странице amoCRM была нажата кнопка «Отказать», поэтому amoCRM не прислал код "
        "авторизации.",
        "Начните подключение заново и нажмите «Разрешить».",
    ),
    "state_missing": (
        "Ссылка неполная",
        "В ответе amoCRM нет метки запроса на подключение, поэтому его не с чем сопоставить.",
        "Начните подключение заново из вашего приложения.",
    ),
    "state_forged": (
        "Ссылка недействительна",
        "Метка запроса в ссылке выдана не этим сервисом или была изменена.",
        "Начните подключение заново из вашего приложения.",
    ),
    "state_unknown": (
        "Ссылка недействительна",
        "У сервиса нет записи об этом запросе на подключение (возможно, она уже удалена).",
        "Начните подключение заново из вашего приложения.",
    ),
    "state_expired": (
        "Срок действия ссылки истёк",
        "Запрос на подключение действует 10 минут, а этот старше.",
        "Начните подключение заново и завершите его за 10 минут.",
    ),
    "state_used": (
        "Ссылка уже использована",
        "Этот запрос на подключение уже завершён: в другом браузере или слишком давно, чтобы "
        "показать его результат здесь.",
        "Если аккаунт не подключён, начните подключение заново.",
    ),
    "state_wrong_browser": (
        "Подключение начато в другом браузере",
        "Этот запрос на подключение принадлежит браузеру, в котором открыли ссылку на "
        "подключение, а это другой браузер — поэтому ответ amoCRM здесь не принимается (иначе "
        "тот, к кому попала ссылка, мог бы привязать ваш аккаунт к своему аккаунту amoCRM).",
        "Завершите подключение в том браузере, где вы его начали, или начните его заново в "
        "этом браузере.",
    ),
    "state_link_used": (
        "Ссылка на подключение уже открыта",
        "Ссылка на подключение работает один раз: завершить подключение может браузер, "
        "открывший её первым.",
        "Если страница amoCRM открыта в том браузере, продолжайте там; иначе начните "
        "подключение заново.",
    ),
    "code_missing": (
        "Нет кода авторизации",
        "В ответе amoCRM нет кода авторизации.",
        "Начните подключение заново.",
    ),
    "bad_referer": (
        "Неизвестный аккаунт amoCRM",
        "В ответе amoCRM нет правильного домена аккаунта.",
        "Начните подключение заново; используйте адрес своего аккаунта, например acme.amocrm.ru.",
    ),
    "secrets_missing": (
        "Ключи интеграции не пришли",
        "Для кнопки на сайте amoCRM создаёт новую интеграцию и сначала присылает её ключи "
        "этому сервису; они не пришли (или шли дольше 10 минут).",
        "Начните подключение заново. Если ошибка повторяется, проверьте, что amoCRM может "
        "достучаться до адреса для ключей (POST /amocrm/secrets) через ваш прокси.",
    ),
    "not_configured": (
        "Интеграция не настроена",
        "Для сервиса не заданы идентификатор и секрет интеграции amoCRM.",
        "Задайте AMOBRIDGE_AMO__CLIENT_ID и AMOBRIDGE_AMO__CLIENT_SECRET или используйте "
        "кнопку на сайте.",
    ),
    "exchange_failed": (
        "amoCRM не принял код авторизации",
        "Код не удалось обменять на токены.",
        "Начните подключение заново (код живёт 20 минут и работает один раз). Если amoCRM "
        "пишет, что адрес возврата не связан с интеграцией, сделайте "
        "AMOBRIDGE_AMO__REDIRECT_URI в точности равным адресу возврата интеграции.",
    ),
    "amocrm_unavailable": (
        "amoCRM не ответил",
        "Обмен кода на токены не удался из-за сети, или amoCRM вернул ошибку сервера.",
        "Попробуйте ещё раз через минуту.",
    ),
}


def problem_texts(code: str, lang: str) -> tuple[str, str, str]:
    """(title, why, fix) of ``code`` in ``lang`` (``ru`` or ``en``)."""
    return (PROBLEMS_RU if lang == "ru" else PROBLEMS)[code]


@dataclass(frozen=True)
class CallbackOutcome:
    ok: bool
    code: str  # "connected" or a PROBLEMS key
    owner: str | None = None
    host: str | None = None
    account_id: int | None = None
    return_to: str = "web"
    app_redirect: str | None = None
    detail: str | None = None  # amoCRM's own words, when it refused
    lang: str | None = None  # the page language the flow started with (None: the browser's)
    return_url: str | None = None  # where a return=web page sends the browser back to


class ConnectFailure(Exception):
    """A connect attempt failed for a reason in :data:`PROBLEMS` (internal to the flows)."""

    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail
