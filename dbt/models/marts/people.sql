-- One row per person: every id that resolves to a user through aliases.
select
    coalesce(a.user_id, e.distinct_id) as person_id,
    count(*) as events,
    count(distinct e.distinct_id) as ids,
    min(e."timestamp") as first_seen_at,
    max(e."timestamp") as last_seen_at
from {{ source('etl', 'events') }} e
left join {{ source('etl', 'aliases') }} a on a.previous_id = e.distinct_id
group by 1
