-- The warehouse view blocked_prompt_rate (by UTC day and workspace), as a dbt model.
select * from {{ source('etl', 'blocked_prompt_rate') }}
