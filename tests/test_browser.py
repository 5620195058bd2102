"""The page in a real browser: headless Chromium driven by selenium (both test-only).

Two pages log in, chat both ways with each other and with a terminal-protocol
client, see a stored message at login, mark a third person's messages with an
unread count, show Korean, emoji, right-to-left text and markup as text, and
keep a line typed while the server restarts -- it is sent after the next
login.

Chromium comes from ``CHATNET_BROWSER_DIR`` (where ``.ci/fetch-chromium``
unpacks Debian's chromium and chromium-driver; by default
``~/.cache/chatnet/chromium``) or from the system's ``chromium`` and
``chromedriver``; without one, or without selenium, these tests skip and say
why.  Every wait is bounded; none is a sleep.
"""

import os
import shutil
import socket
import tempfile

import pytest

from live_server import LiveServer, frame

DEFAULT_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                           "chatnet", "chromium")
WAIT = 15.0
SCREENSHOT = os.environ.get("CHATNET_SCREENSHOT")      # where to save the README's picture


def browser_paths():
    """(chromium, chromedriver, environment for the driver), or a skip saying why."""
    folder = os.environ.get("CHATNET_BROWSER_DIR") or DEFAULT_DIR
    env_file = os.path.join(folder, "env")
    if os.path.exists(env_file):
        with open(env_file) as lines:
            found = dict(line.strip().split("=", 1) for line in lines if "=" in line)
        return found["CHROMIUM"], found["CHROMEDRIVER"], {"LD_LIBRARY_PATH": found["LD_LIBRARY_PATH"]}
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver, {}
    pytest.skip("no Chromium: .ci/run unpacks Debian's chromium and chromium-driver into %s "
                "(.ci/fetch-chromium), or install them" % DEFAULT_DIR)


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium; ``browser.page()`` opens a new window."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test-only) is not installed")
    from selenium.webdriver.chrome.service import Service
    chromium, driver_path, env = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=420,860",
                 "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
                 "--user-data-dir=" + tempfile.mkdtemp(dir=str(tmp_path))):
        options.add_argument(flag)
    service = Service(executable_path=driver_path, env=dict(os.environ, **env))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield Browser(driver)
    finally:
        driver.quit()


class Browser(object):
    def __init__(self, driver):
        self.driver = driver
        self.first = True

    def page(self, url):
        if self.first:
            self.first = False
        else:
            self.driver.switch_to.new_window("window")
        self.driver.get(url)
        return Page(self.driver, self.driver.current_window_handle)


class Page(object):
    """One window of the page, with the few things a user does."""

    def __init__(self, driver, handle):
        self.driver, self.handle = driver, handle

    def _here(self):
        self.driver.switch_to.window(self.handle)

    def find(self, selector):
        from selenium.webdriver.common.by import By
        self._here()
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def type_into(self, selector, text, submit=True):
        """Type ``text`` (then Enter).  ChromeDriver types only the BMP: an emoji is pasted."""
        from selenium.webdriver.common.keys import Keys
        field = self.find(selector)
        field.clear()
        if all(ord(character) < 0x10000 for character in text):
            field.send_keys(text)
        else:
            self.driver.execute_script("arguments[0].value = arguments[1];", field, text)
        if submit:
            field.send_keys(Keys.ENTER)

    def log_in(self, user, password):
        self.type_into("#user", user, submit=False)
        self.type_into("#password", password)
        self.wait_for(lambda: "logged in as " + user in self.status())

    def status(self):
        return self.find("#status").text

    def messages(self):
        """The conversation as (class, text) pairs, read with textContent."""
        self._here()
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages li'))"
            ".map(function (li) { return [li.className, li.textContent]; });")

    def wait_for(self, condition, what=None):
        from selenium.webdriver.support.ui import WebDriverWait
        self._here()
        WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(
            lambda _: self._here() or condition(),
            message=what or "the page never got there: status %r, messages %r" % (
                self.status(), self.messages()[-5:]))

    def wait_for_message(self, text, kind=None):
        self.wait_for(lambda: any(text == body and (kind is None or kind in classes.split())
                                  for classes, body in self.messages()),
                      "no message %r (%s); have %r" % (text, kind, self.messages()[-5:]))


def terminal_client(port, user, password, *lines):
    """``chatnet.client`` as a script: the password, then ``lines``; it prints what it receives."""
    import subprocess
    import sys
    from live_server import REPO, python_env
    return subprocess.run(
        [sys.executable, "-m", "chatnet.client", "--host", "127.0.0.1", "--port", str(port),
         "--user", user, "--password-stdin"], input="\n".join((password,) + lines) + "\n",
        capture_output=True, text=True, timeout=30, cwd=REPO, env=dict(python_env(), PYTHONPATH=REPO))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_pages_and_a_terminal_client_chat_through_restarts(browser, database):
    web = "127.0.0.1:%d" % free_port()
    server = LiveServer(database, "--web", web).start()
    url = "http://%s/" % web
    try:
        # A message stored for alice before she logs in, by a terminal-protocol client.
        carol = server.login(b"carol", b"pw")
        carol.chatwith(b"alice", b"1")
        carol.send("chat/stored for you, 앨리스\n".encode())
        carol.sync()
        carol.close()

        alice = browser.page(url)
        alice.log_in("alice", "pw")
        alice.wait_for_message("carol: stored for you, 앨리스", "other")
        assert "carol (1)" in alice.find("#unread").text           # a third person: counted
        assert alice.find("#password").get_attribute("value") == ""

        bob = browser.page(url)
        bob.log_in("bob", "secret")
        alice.type_into("#partner", "bob")
        alice.wait_for(lambda: "bob (online)" in alice.find("#partner-now").text)
        tricky = "안녕 🙂 مرحبا <b>bold?</b> &amp;"
        alice.type_into("#line", tricky)
        bob.wait_for_message("alice: " + tricky, "other")         # not bob's partner yet
        assert not bob.driver.execute_script("return document.querySelector('#messages b')")
        bob.type_into("#partner", "alice")
        bob.type_into("#line", "hello alice")
        alice.wait_for_message("bob: hello alice", "theirs")

        # The terminal client (chatnet.client, as a script): dave and the page, both ways.
        said = terminal_client(server.port, "dave", "pw", "/chatwith bob", "from the terminal")
        assert said.returncode == 0, said.stderr
        bob.wait_for_message("dave: from the terminal", "other")
        bob.type_into("#partner", "dave")
        bob.wait_for(lambda: "dave (offline" in bob.find("#partner-now").text)
        bob.type_into("#line", "hi from the browser")
        bob.wait_for_message("me → dave: hi from the browser", "mine")
        heard = terminal_client(server.port, "dave", "pw")       # stored: it comes at login
        assert heard.returncode == 0 and "bob: hi from the browser" in heard.stdout, heard
        bob.type_into("#partner", "alice")

        if SCREENSHOT:
            alice._here()
            alice.driver.save_screenshot(SCREENSHOT)

        # The server restarts; alice types while it is away; nothing typed is lost.
        assert server.stop() == 0
        alice.wait_for(lambda: "trying again" in alice.status())
        alice.type_into("#line", "typed while the server was away")
        alice.wait_for_message("me → bob: typed while the server was away", "waiting")
        server = LiveServer(database, "--web", web).start()
        alice.wait_for(lambda: "logged in as alice" in alice.status())
        bob.wait_for(lambda: "logged in as bob" in bob.status())
        bob.wait_for_message("alice: typed while the server was away")
        alice.wait_for(lambda: "bob (online)" in alice.find("#partner-now").text)
        assert not server.problems()
    finally:
        server.kill()


@pytest.fixture
def page_url(database):
    """A server with --web; the page's URL."""
    web = "127.0.0.1:%d" % free_port()
    server = LiveServer(database, "--web", web).start()    # (listening once the plain port is)
    yield "http://%s/" % web
    server.kill()


def test_a_wrong_password_is_said_and_nothing_is_kept(browser, page_url):
    page = browser.page(page_url)
    page.type_into("#user", "alice", submit=False)
    page.type_into("#password", "nope")
    page.wait_for(lambda: page.find("#login-problem").text == "wrong ID or password")
    assert page.find("#password").get_attribute("value") == ""
    assert page.driver.execute_script("return localStorage.length + sessionStorage.length") == 0


def test_the_page_works_from_the_keyboard_alone_on_a_phone_width_screen(browser, page_url):
    from selenium.webdriver.common.keys import Keys
    page = browser.page(page_url)
    page.driver.set_window_size(360, 740)
    page.find("#user").click()
    active = page.driver.switch_to.active_element
    active.send_keys("alice" + Keys.TAB + "pw" + Keys.ENTER)       # Tab to the password, Enter
    page.wait_for(lambda: "logged in as alice" in page.status())
    page.driver.switch_to.active_element.send_keys("alice" + Keys.ENTER)   # focus: partner
    page.wait_for(lambda: "alice (online)" in page.find("#partner-now").text)
    page.driver.switch_to.active_element.send_keys("to myself" + Keys.ENTER)   # focus: line
    page.wait_for_message("alice: to myself", "theirs")
    width = page.driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 360                                           # nothing wider than the phone
