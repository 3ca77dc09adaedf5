"""Two reference files of dense events (ActivityNet layout) shared by the events tests: v1 is
annotated twice (GT1, GT2), v2 once."""

GT1 = {"v1": {"timestamps": [(0, 10), (10, 20)], "sentences": ["A man opens the door.", "He walks out."]},
       "v2": {"timestamps": [(0, 5)], "sentences": ["A dog barks."]}}
GT2 = {"v1": {"timestamps": [(0, 12)], "sentences": ["A man opens a door."]}}
