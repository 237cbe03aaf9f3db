-- RudderStack's pages table: page calls from events.
{{ events_of_type('page') }}
