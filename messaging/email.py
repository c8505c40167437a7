"""Postmark through postmarker's Django email backend.

A thin subclass of `postmarker.django.EmailBackend` that (1) honours POSTMARK_API_BASE,
another address for Postmark's API (a local test server; postmarker's client takes
`root_api_url` but its Django backend does not pass one), with a timeout, and (2) hands
each message's Postmark MessageID back on the EmailMessage (`postmark_message_id`), so
delivery, bounce, open and click webhooks can be matched to our Message rows.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.functional import partition
from postmarker.core import DEFAULT_API, PostmarkClient
from postmarker.django import EmailBackend
from postmarker.django.signals import on_exception, post_send, pre_send

TIMEOUT_SECONDS = 20


class PostmarkEmailBackend(EmailBackend):
    def open(self):
        if self.client is None:
            self.client = PostmarkClient(
                server_token=self.server_token,
                verbosity=self.get_option("VERBOSITY"),
                root_api_url=getattr(settings, "POSTMARK_API_BASE", "") or DEFAULT_API,
                timeout=TIMEOUT_SECONDS,
            )
            return True
        return False

    def send_messages(self, email_messages):
        """As postmarker's, plus each message's MessageID set on it."""
        if not email_messages:
            return 0
        msg_count = 0
        try:
            client_created = self.open()
            prepared = [self.prepare_message(message) for message in email_messages]
            pre_send.send_robust(self.__class__, messages=prepared)
            responses = self.client.emails.send_batch(
                *prepared, TrackOpens=self.get_option("TRACK_OPENS")
            )
            post_send.send_robust(self.__class__, messages=prepared, response=responses)
            for message, response in zip(email_messages, responses, strict=False):
                message.postmark_message_id = response.get("MessageID", "")
                message.postmark_error_code = response.get("ErrorCode", 0)
                message.postmark_error_message = response.get("Message", "")
            sent, not_sent = partition(lambda x: x["ErrorCode"] != 0, responses)
            msg_count = len(sent)
            if not_sent:
                self.raise_for_response(not_sent)
            if client_created:
                self.close()
        except Exception as exc:
            on_exception.send_robust(self.__class__, raw_messages=email_messages, exception=exc)
            if not self.fail_silently:
                raise
        return msg_count
